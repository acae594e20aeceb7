"""One process at a time per run folder: an advisory lock on FOLDER/.lock.

Two trainings into one folder mixed their histories and metrics silently, so a
second process refuses with one line naming the holder (pid, host, since when,
doing what: written into the file). The lock is the kernel's (`flock`), so a
process that dies, even by SIGKILL, releases it at once: its folder is taken
over by the next run, with no stale-lock guessing. Linux emulates flock with
POSIX locks on NFS, so workers on several hosts see it too.
"""

import contextlib
import fcntl
import json
import os
import socket
import time

LOCK_FILE = ".lock"


class RunFolderInUse(ValueError):
  """Another live process holds the run folder."""


@contextlib.contextmanager
def hold(folder: str, what: str = "training"):
  """Holds FOLDER/.lock for the duration of the block (the folder is created).

  Raises:
    RunFolderInUse: another live process holds it.
    ValueError: the folder cannot be created or written.
  """
  path = os.path.join(folder, LOCK_FILE)
  try:
    os.makedirs(folder, exist_ok=True)
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as error:  # a file in the way, a read-only mount, no permission
    raise ValueError(f"--model_dir={folder} cannot be written ({error.strerror or error}): "
                     "choose a folder you can write to.") from None
  try:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      try:
        holder = json.loads(os.pread(handle, 4096, 0) or b"{}")
      except ValueError:
        holder = {}
      since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
      raise RunFolderInUse(
          f"{folder} is in use by pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
          f"({holder.get('what', 'training')} since {since}): wait for it to finish, or use "
          "another --model_dir.") from None
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                         "since": time.time(), "what": what}).encode()
    os.ftruncate(handle, 0)
    os.pwrite(handle, record, 0)
    yield
  finally:
    os.close(handle)  # releases the lock
