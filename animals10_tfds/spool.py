"""A temporary append-only file of encoded images, read back by offset.

Splits can only be assigned once every file has been hashed, but each file
should be read and decoded once: the scan writes each image's JPEG bytes here,
and the split generators read them back, so memory stays flat at any scale.

The file has no name from the start (POSIX: it is unlinked as soon as it is
open), so a build killed with -9 leaves nothing behind: the kernel frees its
space when the process ends. Where a file cannot be unlinked while open
(Windows), it is removed when the spool is closed or collected.
"""

import os
import tempfile
import threading
import weakref


class Spool:
  """Appends byte strings to a temporary file; returns (offset, length)."""

  def __init__(self, directory=None):
    handle, path = tempfile.mkstemp(prefix="animals10-spool-", suffix=".bin",
                                    dir=directory)
    self._file = os.fdopen(handle, "w+b")
    self.path = None if _unlinked(path) else path  # the name, while it has one
    self._lock = threading.Lock()
    self._readers = 0
    self._finalizer = weakref.finalize(self, _remove, self._file, self.path)

  def append(self, data: bytes) -> tuple[int, int]:
    with self._lock:
      self._file.seek(0, os.SEEK_END)
      offset = self._file.tell()
      self._file.write(data)
    return offset, len(data)

  def read(self, location: tuple[int, int]) -> bytes:
    offset, length = location
    with self._lock:
      self._file.seek(offset)
      return self._file.read(length)

  def expect_readers(self, count: int):
    """The file is closed when `count` readers have called `release`."""
    self._readers = count
    if count == 0:
      self.close()

  def release(self):
    self._readers -= 1
    if self._readers <= 0:
      self.close()

  def close(self):
    self._finalizer()


def _unlinked(path) -> bool:
  if os.name == "nt":
    return False
  os.remove(path)
  return True


def _remove(file, path):
  file.close()
  if path and os.path.exists(path):
    os.remove(path)
