"""Where the raw Animals-10 images are, and which files count as candidates.

Kaggle's download is a zip holding `raw-img/<class>/<file>` with Italian class
folder names; users unpack it or not. `Source` reads either in place.
"""

import dataclasses
import os
import zipfile
import zlib
from typing import Iterator, Optional, Sequence

from etils import epath

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

RAW_DIR_NAME = "raw-img"
ARCHIVE_NAME = "archive.zip"
KAGGLE_URL = "https://www.kaggle.com/datasets/alessiocorrado99/animals10"
# What to do when there are no images: the first words of every such error.
PUT_THE_DOWNLOAD = (f"Put Kaggle's {ARCHIVE_NAME} ({KAGGLE_URL}) or its unpacked "
                    f"'{RAW_DIR_NAME}/' folder")
# A zip member that cannot be read (bad CRC-32, cut short, bad compression).
UNREADABLE = (OSError, EOFError, zipfile.BadZipFile, zlib.error)
# No photo of this kind comes near it (Animals-10's largest is a few MB); a file or
# zip member past it is skipped unread, so a decompression bomb (6 GiB of zeros in
# a 14 MB archive) or a huge file never reaches memory.
MAX_FILE_BYTES = 100 * 1000 * 1000


class TooLarge(ValueError):
  """A file or zip member larger than `MAX_FILE_BYTES`: skipped, with this reason."""

  def __init__(self, size: int):
    super().__init__(f"larger than {MAX_FILE_BYTES // 1000000} MB ({size:,} bytes"
                     f"{' or more' if size > MAX_FILE_BYTES else ''}): not a photo of this "
                     "data set")


@dataclasses.dataclass(frozen=True)
class Entry:
  """One candidate file: where it is and which class folder it sits in."""

  path: str  # relative to raw-img, posix separators, e.g. "cane/OIP-x.jpeg"
  label: int


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
      ValueError: when the zip cannot be opened.
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
    raise FileNotFoundError(f"{PUT_THE_DOWNLOAD} in {manual_dir}: it holds no Animals-10 "
                            "images.")

  @classmethod
  def _from_zip(cls, archive: epath.Path) -> "Source":
    try:
      with zipfile.ZipFile(os.fspath(archive)) as zip_file:
        names = zip_file.namelist()
    except (OSError, zipfile.BadZipFile) as error:
      raise ValueError(f"Download {archive} again (or unpack it and put its "
                       f"'{RAW_DIR_NAME}/' folder beside it): it cannot be opened as a "
                       f"zip ({error}).") from None
    prefix = _zip_prefix(names)
    if prefix is None:
      raise FileNotFoundError(f"{PUT_THE_DOWNLOAD} in place of {archive}: it holds no "
                              f"'{RAW_DIR_NAME}/<class>/' folders.")
    return cls(prefix, archive=os.fspath(archive))

  def list(self) -> tuple[list[Entry], list[dict]]:
    """Lists candidate images, sorted by path.

    Returns:
      (entries, skipped): the files to scan, and `{path, reason}` for files that
      are not in a class folder and directory links that are not followed.

    Raises:
      ValueError: for a folder that is not one of the ten classes.
    """
    skipped = []
    if self.archive:
      relative = [name[len(self.root):] for name in self._zip_file().namelist()
                  if name.startswith(self.root) and not name.endswith("/")]
    else:
      relative = list(_walk(epath.Path(self.root), "", (_real(self.root),), skipped))
    entries = []
    for path in sorted(relative):
      parts = path.split("/")
      if any(_is_litter(part) for part in parts):
        continue
      if not _is_utf8(path):  # a record's file_name must be text; name it escaped
        skipped.append({"path": os.fsencode(path).decode("utf-8", "backslashreplace"),
                        "reason": "file name is not valid UTF-8: rename the file"})
        continue
      if len(parts) == 1:
        skipped.append({"path": path, "reason": "not inside a class folder"})
        continue
      if parts[0] not in FOLDERS:
        raise ValueError(
            f"Move '{parts[0]}' out of {self.root} and build again: it is not one of the "
            f"ten class folders ({', '.join(FOLDERS)}).")
      entries.append(Entry(path=path, label=FOLDERS.index(parts[0])))
    if not entries:
      raise FileNotFoundError(f"{PUT_THE_DOWNLOAD} in place of {self.archive or self.root}: "
                              "its class folders hold no files.")
    return entries, sorted(skipped, key=lambda item: item["path"])

  def read(self, path: str) -> bytes:
    """The file's bytes, read through a stream bounded by `MAX_FILE_BYTES`.

    Raises:
      TooLarge: its declared size (zip) or size on disk is past the cap, or its
        stream gives more (a header that lies).
    """
    if self.archive:
      name = self.root + path
      declared = self._zip_file().getinfo(name).file_size
      if declared > MAX_FILE_BYTES:
        raise TooLarge(declared)
      with self._zip_file().open(name) as stream:
        return _bounded(stream)
    full = epath.Path(self.root, path)
    with open(os.fspath(full), "rb") as stream:
      size = os.fstat(stream.fileno()).st_size
      if size > MAX_FILE_BYTES:
        raise TooLarge(size)
      return _bounded(stream)

  def _zip_file(self) -> zipfile.ZipFile:
    if self._zip is None:
      self._zip = zipfile.ZipFile(self.archive)
    return self._zip

  def __getstate__(self):
    return {"root": self.root, "archive": self.archive, "_zip": None}


def _bounded(stream) -> bytes:
  data = stream.read(MAX_FILE_BYTES + 1)
  if len(data) > MAX_FILE_BYTES:
    raise TooLarge(len(data))
  return data


def _real(path) -> str:
  return os.path.realpath(os.fspath(path))


def _walk(folder: epath.Path, prefix: str, chain: tuple[str, ...],
          skipped: list) -> Iterator[str]:
  """Relative paths of the files under `folder`.

  `chain` holds the real paths of the tree's root and of the folders walked
  down to `folder`. A directory link that leads back into the tree
  (`cane/loop -> ../cane`), to a folder holding the tree, or to a folder it is
  already in is not followed, and is listed in `skipped`: following it
  repeats the same files down to the OS's nesting limit.
  """
  root = chain[0]
  for path in folder.iterdir():
    if path.is_dir():
      target = _real(path)
      linked = os.path.islink(os.fspath(path))
      if target in chain or linked and (_inside(target, root) or _inside(root, target)):
        skipped.append({"path": f"{prefix}{path.name}",
                        "reason": "link to a folder already in the tree, not followed"})
        continue
      yield from _walk(path, f"{prefix}{path.name}/", chain + (target,), skipped)
    else:
      yield prefix + path.name


def _inside(path: str, folder: str) -> bool:
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _zip_prefix(names: Sequence[str]) -> Optional[str]:
  for name in names:
    parts = name.split("/")
    if RAW_DIR_NAME in parts:
      index = parts.index(RAW_DIR_NAME)
      if len(parts) > index + 2 and parts[index + 1] in FOLDERS:
        return "/".join(parts[:index + 1]) + "/"
  return None


def _is_utf8(path: str) -> bool:
  """False for a name the OS gave with undecodable bytes (surrogate escapes)."""
  try:
    path.encode("utf-8")
  except UnicodeEncodeError:
    return False
  return True


def _is_litter(name: str) -> bool:
  return name.startswith(".") or name.lower() in LITTER
