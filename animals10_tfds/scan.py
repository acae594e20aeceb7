"""Reads every Animals-10 image once: hashes, measures and re-encodes it.

The builder and `tools.eda` share this module, so there is one implementation of
"what is this file": its SHA-256, perceptual hash, size, mode, format and, when a
target size is given, the RGB JPEG bytes to store. Work runs in a process pool
(spawned, never forked: the parent has TensorFlow's threads running) whose
workers exit when the parent dies.
"""

from concurrent import futures
import contextlib
import dataclasses
import hashlib
import io
import multiprocessing
import os
import sys
import threading
import time
import types
from typing import Iterator, Optional, Sequence

from PIL import Image

from animals10_tfds import image as image_lib
from animals10_tfds import source as source_lib


@dataclasses.dataclass
class ScanResult:
  """What one read of one file tells."""

  path: str
  label: int
  size_bytes: int = 0
  sha256: str = ""
  phash: int = 0
  width: int = 0
  height: int = 0
  mode: str = ""
  format: str = ""
  palette: str = ""
  orientation: str = ""
  error: str = ""
  encoded: Optional[bytes] = None  # RGB JPEG to store; None if not asked for


def scan_bytes(entry: source_lib.Entry, data: bytes,
               short_side: Optional[int] = None, encode: bool = False) -> ScanResult:
  """Scans one file's bytes.

  Args:
    entry: the file's path and label.
    data: its bytes, as read once from disk or zip.
    short_side: with `encode`, shorter side to downscale to (None: keep size).
    encode: also produce the RGB JPEG bytes to store.

  Returns:
    A `ScanResult`; `error` says why the file cannot be used, if it cannot.
  """
  result = ScanResult(path=entry.path, label=entry.label, size_bytes=len(data),
                      sha256=hashlib.sha256(data).hexdigest())
  if not data:
    result.error = "empty file"
    return result
  try:
    with image_lib.bombs_refused():
      header = Image.open(io.BytesIO(data))
      result.width, result.height = header.size
      result.mode, result.format = header.mode, header.format or ""
      result.palette = header.palette.mode if header.palette else ""
      result.orientation = image_lib.orientation(*header.size)
      # The hash is taken from a small canonical decode, identical for every
      # config, so near-duplicate groups (and splits) agree across configs.
      result.phash = image_lib.phash(image_lib.to_rgb(
          image_lib.decoded(data, draft_size=(64, 64))))
      if encode:
        result.encoded = image_lib.rgb_jpeg(data, header, short_side)
  except Exception as error:  # pylint: disable=broad-except
    result.error = image_lib.reason(error)
    result.encoded = None
  return result


_WORKER_SOURCE: Optional[source_lib.Source] = None


def _init_worker(source: source_lib.Source, parent: Optional[int] = None):
  global _WORKER_SOURCE
  _WORKER_SOURCE = source
  if parent is not None:
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int):
  """Ends this worker once its parent is gone (killed with -9, say).

  Without it, a worker of a killed build waits on its task queue forever,
  holding hundreds of MB.
  """
  while os.getppid() == parent:
    time.sleep(0.5)
  os._exit(1)  # pylint: disable=protected-access


def _scan_task(task) -> ScanResult:
  entry, short_side, encode = task
  try:
    data = _WORKER_SOURCE.read(entry.path)
  except source_lib.TooLarge as error:
    return ScanResult(path=entry.path, label=entry.label, error=str(error))
  except source_lib.UNREADABLE as error:
    return ScanResult(path=entry.path, label=entry.label,
                      error=f"unreadable: {error}")
  return scan_bytes(entry, data, short_side, encode)


def scan(source: source_lib.Source, entries: Sequence[source_lib.Entry], *,
         short_side=None, encode=False, workers: Optional[int] = None,
         progress: bool = True) -> Iterator[ScanResult]:
  """Scans `entries` in parallel, reading each file once; yields in order.

  Args:
    source: where the files are.
    entries: the files, from `Source.list`.
    short_side: see `scan_bytes`.
    encode: see `scan_bytes`.
    workers: processes to use; default all cores, 0 or 1 scans in-process.
    progress: show a progress bar.

  Yields:
    One `ScanResult` per entry, in the order of `entries`.
  """
  workers = (os.cpu_count() or 1) if workers is None else workers
  tasks = [(entry, short_side, encode) for entry in entries]
  bar = _progress_bar(len(tasks), progress)
  if workers <= 1 or len(tasks) < 64:
    _init_worker(source)
    for task in tasks:
      yield _scan_task(task)
      bar.update(1)
  else:
    with _executor(workers, source) as executor:
      with _light_children():  # the workers start at the first submission
        results = executor.map(_scan_task, tasks, chunksize=32)
      for result in results:
        yield result
        bar.update(1)
  bar.close()


@contextlib.contextmanager
def _light_children():
  """Workers spawned in this block import neither TensorFlow nor the parent's script.

  A spawned child re-runs the parent's `__main__` (for `tfds build`, the TFDS
  CLI, which imports TensorFlow) and imports this package, whose builder
  imports TensorFlow too: measured, that made a 499-file build 2.7x slower
  than scanning in-process. The package skips its builder when
  ANIMALS10_SCAN_WORKER is set, and the children see a bare `__main__`.
  """
  main = sys.modules["__main__"]
  previous = os.environ.get("ANIMALS10_SCAN_WORKER")
  sys.modules["__main__"] = types.ModuleType("__main__")
  os.environ["ANIMALS10_SCAN_WORKER"] = "1"
  try:
    yield
  finally:
    sys.modules["__main__"] = main
    if previous is None:
      del os.environ["ANIMALS10_SCAN_WORKER"]
    else:
      os.environ["ANIMALS10_SCAN_WORKER"] = previous


def _executor(workers: int, source: source_lib.Source):
  """A spawn-based pool whose workers can import this package.

  Spawned workers copy the parent's sys.path: when this package was imported
  from a path added only for the import (as `tfds build` does), keep it there.
  A worker that dies raises BrokenProcessPool instead of hanging the build; a
  parent that dies takes its workers with it (`_exit_with`).
  """
  package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  # Here, when a pool is made, not at import: the spawned children copy sys.path
  # as it is at that moment.
  if package_parent not in sys.path:
    sys.path.append(package_parent)
  return futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context("spawn"),
      initializer=_init_worker, initargs=(source, os.getpid()))


def _progress_bar(total: int, enabled: bool):
  import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, unit="img", desc="Scanning images",
                   disable=not enabled, mininterval=1.0)
