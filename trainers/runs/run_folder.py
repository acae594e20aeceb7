"""Writing into a run folder: whole files or nothing, and one line when the disk is full.

Every file of a run folder is written under a temporary name in the same folder
and renamed into place, so a reader (a resumed run, `tools.compare`, another
worker) never sees half a file, whatever kills the writer. Files get the modes a
plain `open(path, "w")` would give (the umask's), not the temporary file's 0600,
so the other workers and users of a shared run folder can read them.

A full disk is a `NoSpaceLeft` (a ValueError: the trainer prints it as one line)
naming the device and the file; the file it was writing is not touched, so the
folder resumes once space is freed.
"""

import errno
import hashlib
import json
import os
import shutil
import tempfile
from typing import Callable



def umask() -> int:
  """The process's umask, read without changing it where Linux tells it
  (/proc/self/status), else by setting and restoring it."""
  try:
    with open("/proc/self/status") as status:
      for line in status:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except OSError:
    pass
  current = os.umask(0o022)
  os.umask(current)
  return current


def file_mode() -> int:
  """The mode `open(path, "w")` gives a new file: 0666 less the umask."""
  return 0o666 & ~umask()


def directory_mode() -> int:
  """The mode `os.mkdir` gives a new folder: 0777 less the umask."""
  return 0o777 & ~umask()


class NoSpaceLeft(ValueError):
  """The disk holding a run-folder file is full."""

  def __init__(self, path: str):
    super().__init__(f"no space left on {device_of(path)} while writing {path}: free some "
                     "space and run the same command again; it resumes from the last "
                     "finished epoch.")
    self.path = path


def is_disk_full(error: BaseException) -> bool:
  """OSError ENOSPC, or h5py's / TensorFlow's wording of it."""
  return (isinstance(error, OSError) and error.errno == errno.ENOSPC) or (
      "No space left on device" in str(error))


def device_of(path: str) -> str:
  """`tmpfs at /mnt/runs`: the file system and mount point holding `path`."""
  path = os.path.realpath(path)
  best = ("", "")
  try:
    with open("/proc/mounts") as mounts:
      for line in mounts:
        device, mount_point = line.split()[:2]
        inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best[1]):
          best = (device, mount_point)
  except OSError:
    pass
  return f"{best[0]} at {best[1]}" if best[1] else f"the disk of {os.path.dirname(path)}"


def replace_with(path: str, write: Callable[[str], None], suffix: str = "",
                 expected_bytes: int = 0):
  """Makes `path` by `write(temporary)` then a rename; nothing changes on failure.

  Args:
    path: the file to make (or replace).
    write: writes the whole file at the path it is given.
    suffix: the temporary name's ending, for writers that insist on one
      (Keras: ".weights.h5").
    expected_bytes: about how large the file will be; when the disk has less
      free space, `NoSpaceLeft` is raised before anything is written (h5py and
      TensorFlow do not fail cleanly in the middle of a write).

  Raises:
    NoSpaceLeft: when the disk is (or would become) full.
  """
  directory = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(directory, exist_ok=True)
    if expected_bytes and shutil.disk_usage(directory).free < expected_bytes + (1 << 20):
      raise NoSpaceLeft(path)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    os.close(handle)
  except OSError as error:
    if is_disk_full(error):
      raise NoSpaceLeft(path) from None
    raise
  try:
    write(temporary)
    os.chmod(temporary, file_mode())
    os.replace(temporary, path)
  except BaseException as error:
    if os.path.exists(temporary):
      os.remove(temporary)
    if is_disk_full(error):
      raise NoSpaceLeft(path) from None
    raise


def atomic_write(path: str, data: bytes):
  """Writes `data` to `path` via a temporary file and a rename."""

  def write(temporary):
    with open(temporary, "wb") as file:
      file.write(data)

  replace_with(path, write)


def write_json(path: str, value):
  atomic_write(path, (json.dumps(value, indent=2, sort_keys=False) + "\n").encode())


def free_or_ours(path: str, key: str) -> bool:
  """Whether `path` may be written: absent, or a JSON object holding `key` (a tool's
  own earlier output). Anything else is a user's file, to be left as it is."""
  if not os.path.lexists(path):
    return True
  try:
    with open(path) as file:
      return key in json.load(file)
  except (OSError, ValueError, TypeError):
    return False


def atomic_copy(source: str, path: str):
  replace_with(path, lambda temporary: shutil.copyfile(source, temporary),
               suffix=os.path.splitext(path)[1],
               expected_bytes=os.path.getsize(source))


def sha256_of(path: str) -> str:
  """The SHA-256 of a file's bytes, read in blocks."""
  digest = hashlib.sha256()
  with open(path, "rb") as file:
    for block in iter(lambda: file.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


# A scratch folder of ours holds this file: the process that made it, and what for.
SCRATCH_RECORD = "animals10-scratch.json"


def scratch_folder(parent: str, prefix: str, **record) -> str:
  """A new scratch folder `parent/<prefix>XXXX` marked as ours (`SCRATCH_RECORD`:
  this process's pid and `record`), after removing the ones of dead processes."""
  os.makedirs(parent, exist_ok=True)
  for folder, _ in stale_scratch(parent, prefix):
    shutil.rmtree(folder, ignore_errors=True)
  folder = tempfile.mkdtemp(prefix=prefix, dir=parent)
  with open(os.path.join(folder, SCRATCH_RECORD), "w") as file:
    json.dump({**record, "pid": os.getpid()}, file)
  return folder


def scratch_folders(parent: str, prefix: str):
  """(folder, its record) of every scratch folder of ours named `prefix`* in `parent`:
  a folder without our record is not ours and is never listed."""
  try:
    names = sorted(os.listdir(parent))
  except OSError:
    return
  for name in names:
    folder = os.path.join(parent, name)
    if not name.startswith(prefix) or os.path.islink(folder):
      continue
    try:
      with open(os.path.join(folder, SCRATCH_RECORD)) as file:
        record = json.load(file)
    except (OSError, ValueError):
      continue
    if isinstance(record, dict):
      yield folder, record


def stale_scratch(parent: str, prefix: str):
  """`scratch_folders` whose process is gone (killed, or ended without cleaning up)."""
  return [(folder, record) for folder, record in scratch_folders(parent, prefix)
          if not alive(record.get("pid"))]


def alive(pid) -> bool:
  """Whether a process of this id runs on this machine."""
  try:
    os.kill(int(pid), 0)
  except (ProcessLookupError, ValueError, TypeError, OverflowError):
    return False
  except PermissionError:
    return True
  return True
