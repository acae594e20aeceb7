"""Reads every Animals-10 image once: hashes, measures and re-encodes it.

The builder and `tools.eda` share this module, so there is one implementation of
"what is this file": its SHA-256, perceptual hash, size, mode, format and, when a
target size is given, the RGB JPEG bytes to store. Work runs in a process pool
(spawned, never forked: the parent has TensorFlow's threads running).
"""

from concurrent import futures
import contextlib
import dataclasses
import hashlib
import io
import multiprocessing
import os
import sys
import types
import warnings
import zipfile
from typing import Iterator, Optional, Sequence

import numpy as np
from etils import epath
from PIL import Image, ImageOps

# Kaggle's folder names (Italian) and the English label each one stands for, in
# label-index order.
CLASSES = (
    ("cane", "dog"),
    ("cavallo", "horse"),
    ("elefante", "elephant"),
    ("farfalla", "butterfly"),
    ("gallina", "chicken"),
    ("gatto", "cat"),
    ("mucca", "cow"),
    ("pecora", "sheep"),
    ("ragno", "spider"),
    ("scoiattolo", "squirrel"),
)
FOLDERS = tuple(italian for italian, _ in CLASSES)
LABELS = tuple(english for _, english in CLASSES)

# Files an OS or a zip tool leaves behind; never images, never reported.
LITTER = frozenset({"thumbs.db", "desktop.ini", "__macosx", "icon\r"})

# Refuse anything larger before decoding: 40 MP is 8x the largest real photo in
# Animals-10 and keeps a decoded RGB image under 120 MB.
MAX_PIXELS = 40_000_000

RAW_DIR_NAME = "raw-img"
ARCHIVE_NAME = "archive.zip"
JPEG_QUALITY = 90


class RefusedImage(ValueError):
  """A file we will not decode (too many pixels)."""


@dataclasses.dataclass(frozen=True)
class Entry:
  """One candidate file: where it is and which class folder it sits in."""

  path: str  # relative to raw-img, posix separators, e.g. "cane/OIP-x.jpeg"
  label: int


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


class Source:
  """The raw images: an unpacked `raw-img/` folder or Kaggle's `archive.zip`."""

  def __init__(self, root: str, archive: Optional[str] = None):
    self.root = root  # folder holding the class folders (or prefix inside zip)
    self.archive = archive
    self._zip = None

  @classmethod
  def find(cls, manual_dir) -> "Source":
    """Locates the images under `manual_dir`.

    Args:
      manual_dir: a folder holding `raw-img/`, `archive.zip`, or the ten class
        folders themselves; or the path of Kaggle's zip itself.

    Returns:
      A `Source`.

    Raises:
      FileNotFoundError: when none of those is there.
    """
    manual_dir = epath.Path(manual_dir)
    if manual_dir.is_file() and manual_dir.suffix == ".zip":
      return cls._from_zip(manual_dir)
    for candidate in (manual_dir / RAW_DIR_NAME, manual_dir):
      if candidate.is_dir() and any(
          (candidate / folder).is_dir() for folder in FOLDERS):
        return cls(os.fspath(candidate))
    archive = manual_dir / ARCHIVE_NAME
    if archive.is_file():
      return cls._from_zip(archive)
    raise FileNotFoundError(
        f"No Animals-10 images in {manual_dir}: put Kaggle's {ARCHIVE_NAME} "
        f"(https://www.kaggle.com/datasets/alessiocorrado99/animals10) or its "
        f"unpacked '{RAW_DIR_NAME}/' folder there.")

  @classmethod
  def _from_zip(cls, archive: epath.Path) -> "Source":
    with zipfile.ZipFile(os.fspath(archive)) as zip_file:
      names = zip_file.namelist()
    prefix = _zip_prefix(names)
    if prefix is None:
      raise FileNotFoundError(
          f"{archive} holds no '{RAW_DIR_NAME}/<class>/' folders: is it the "
          "Animals-10 download from Kaggle?")
    return cls(prefix, archive=os.fspath(archive))

  def list(self) -> tuple[list[Entry], list[dict]]:
    """Lists candidate images, sorted by path.

    Returns:
      (entries, skipped): the files to scan, and `{path, reason}` for files that
      are not in a class folder.

    Raises:
      ValueError: for a folder that is not one of the ten classes.
    """
    if self.archive:
      relative = [name[len(self.root):] for name in self._zip_file().namelist()
                  if name.startswith(self.root) and not name.endswith("/")]
    else:
      relative = list(_walk(epath.Path(self.root), ""))
    entries, skipped = [], []
    for path in sorted(relative):
      parts = path.split("/")
      if any(_is_litter(part) for part in parts):
        continue
      if len(parts) == 1:
        skipped.append({"path": path, "reason": "not inside a class folder"})
        continue
      if parts[0] not in FOLDERS:
        raise ValueError(
            f"Unknown class folder '{parts[0]}' in {self.root}: expected only "
            f"{', '.join(FOLDERS)}. Move it out and build again.")
      entries.append(Entry(path=path, label=FOLDERS.index(parts[0])))
    return entries, skipped

  def read(self, path: str) -> bytes:
    if self.archive:
      return self._zip_file().read(self.root + path)
    return epath.Path(self.root, path).read_bytes()

  def _zip_file(self) -> zipfile.ZipFile:
    if self._zip is None:
      self._zip = zipfile.ZipFile(self.archive)
    return self._zip

  def __getstate__(self):
    return {"root": self.root, "archive": self.archive, "_zip": None}


def _walk(folder: epath.Path, prefix: str) -> Iterator[str]:
  for path in folder.iterdir():
    if path.is_dir():
      yield from _walk(path, f"{prefix}{path.name}/")
    else:
      yield prefix + path.name


def _zip_prefix(names: Sequence[str]) -> Optional[str]:
  for name in names:
    parts = name.split("/")
    if RAW_DIR_NAME in parts:
      index = parts.index(RAW_DIR_NAME)
      if len(parts) > index + 2 and parts[index + 1] in FOLDERS:
        return "/".join(parts[:index + 1]) + "/"
  return None


def _is_litter(name: str) -> bool:
  return name.startswith(".") or name.lower() in LITTER


def orientation(width: int, height: int) -> str:
  """The study's orientation class of a width x height image."""
  if width > height:
    return "landscape"
  return "portrait" if width < height else "squared"


def _dct_matrix(size: int) -> np.ndarray:
  """Orthonormal DCT-II basis, so a 2-D DCT is two matrix products."""
  k = np.arange(size)[:, None]
  n = np.arange(size)[None, :]
  basis = np.cos(np.pi * (2 * n + 1) * k / (2 * size)) * np.sqrt(2 / size)
  basis[0] /= np.sqrt(2)
  return basis


_DCT32 = _dct_matrix(32)


def phash(image: Image.Image) -> int:
  """64-bit perceptual hash (the classic DCT pHash) of an RGB or L image."""
  gray = image.convert("L").resize((32, 32), Image.Resampling.LANCZOS)
  pixels = np.asarray(gray, dtype=np.float64)
  low = (_DCT32 @ pixels @ _DCT32.T)[:8, :8]
  bits = (low > np.median(low)).ravel()
  return int(np.packbits(bits).view(">u8")[0])


def to_rgb(image: Image.Image) -> Image.Image:
  """Any Pillow mode to 8-bit RGB; transparency is composited onto white."""
  if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
    pixels = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
    image = Image.fromarray(
        np.clip(pixels * (255.0 / top), 0, 255).astype(np.uint8), "L")
  has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
      image.mode == "P" and "transparency" in image.info)
  if has_alpha:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")
  return image.convert("RGB")


def _is_plain_jpeg(image: Image.Image) -> bool:
  """Baseline RGB JPEG with no rotation to apply: its bytes can be stored as-is."""
  return (image.format == "JPEG" and image.mode == "RGB"
          and not image.info.get("progressive")
          and not image.info.get("progression")
          and image.getexif().get(0x0112, 1) == 1)


def _resized(image: Image.Image, short_side: Optional[int]) -> Image.Image:
  width, height = image.size
  if short_side is None or min(width, height) <= short_side:
    return image
  scale = short_side / min(width, height)
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  return image.resize(size, Image.Resampling.LANCZOS)


def _target_size(size, short_side):
  width, height = size
  scale = short_side / min(width, height)
  return (int(np.ceil(width * scale)), int(np.ceil(height * scale)))


def _decoded(data: bytes, draft_size=None) -> Image.Image:
  """Opens, refuses bombs before allocating, decodes and applies EXIF rotation."""
  image = Image.open(io.BytesIO(data))
  width, height = image.size
  if width * height > MAX_PIXELS:
    raise RefusedImage(f"decompression bomb refused: {width}x{height} pixels is "
                     f"over the {MAX_PIXELS:,} limit")
  # MPO (a camera JPEG with a second frame) decodes through the same libjpeg
  # path: without the draft its 24 MP first frame took 424 ms instead of ~50.
  if draft_size and image.format in ("JPEG", "MPO"):
    image.draft(image.mode, draft_size)
  image.load()
  return ImageOps.exif_transpose(image)


def scan_bytes(entry: Entry, data: bytes,
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
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      header = Image.open(io.BytesIO(data))
      result.width, result.height = header.size
      result.mode, result.format = header.mode, header.format or ""
      result.palette = header.palette.mode if header.palette else ""
      result.orientation = orientation(*header.size)
      # The hash is taken from a small canonical decode, identical for every
      # config, so near-duplicate groups (and splits) agree across configs.
      result.phash = phash(to_rgb(_decoded(data, draft_size=(64, 64))))
      if encode:
        keep = _is_plain_jpeg(header) and (
            short_side is None or min(header.size) <= short_side)
        if keep:
          result.encoded = data
        else:
          draft = _target_size(header.size, short_side) if short_side else None
          image = _resized(to_rgb(_decoded(data, draft)), short_side)
          buffer = io.BytesIO()
          image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
          result.encoded = buffer.getvalue()
  except Exception as error:  # pylint: disable=broad-except
    # Pillow raises a zoo of types for bad files (OSError, SyntaxError,
    # ValueError, struct.error, ...): any of them means "skip and report".
    result.error = _reason(error)
    result.encoded = None
  return result


def _reason(error: Exception) -> str:
  text = str(error).splitlines()[0] if str(error) else ""
  if isinstance(error, RefusedImage):
    return text
  if isinstance(error, Image.UnidentifiedImageError):
    return "not an image Pillow can read"
  if isinstance(error, (Image.DecompressionBombError,
                        Image.DecompressionBombWarning)):
    return f"decompression bomb refused: {text}"
  if "truncated" in text.lower():
    return "truncated image"
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


_WORKER_SOURCE: Optional[Source] = None


def _init_worker(source: Source):
  global _WORKER_SOURCE
  _WORKER_SOURCE = source


def _scan_task(task) -> ScanResult:
  entry, short_side, encode = task
  try:
    data = _WORKER_SOURCE.read(entry.path)
  except OSError as error:
    return ScanResult(path=entry.path, label=entry.label,
                      error=f"unreadable: {error}")
  return scan_bytes(entry, data, short_side, encode)


def scan(source: Source, entries: Sequence[Entry], *, short_side=None,
         encode=False, workers: Optional[int] = None,
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


def _executor(workers: int, source: Source):
  """A spawn-based pool whose workers can import this package.

  Spawned workers copy the parent's sys.path: when this package was imported
  from a path added only for the import (as `tfds build` does), keep it there.
  A worker that dies raises BrokenProcessPool instead of hanging the build.
  """
  package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if package_parent not in sys.path:  # spawned children copy sys.path
    sys.path.append(package_parent)
  return futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context("spawn"),
      initializer=_init_worker, initargs=(source,))


def _progress_bar(total: int, enabled: bool):
  import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, unit="img", desc="Scanning images",
                   disable=not enabled, mininterval=1.0)
