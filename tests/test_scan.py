"""Odd and broken files: each kept as a decodable RGB JPEG or skipped with a reason."""

import io
import os
import signal
import subprocess
import sys
import zipfile

import numpy as np
from PIL import Image
import processes
import pytest
import tensorflow as tf

from animals10_tfds import scan
from animals10_tfds import source


def _image(mode="RGB", size=(64, 48)):
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  return Image.fromarray(pixels).convert(mode)


def _bytes(image, **save):
  buffer = io.BytesIO()
  image.save(buffer, **save)
  return buffer.getvalue()


def _exif_rotated():
  image = _image(size=(80, 40))
  exif = Image.Exif()
  exif[0x0112] = 6  # rotate 90 degrees on display
  return _bytes(image, format="JPEG", exif=exif)


def _palette_with_transparency():
  image = _image("P")
  return _bytes(image, format="PNG", transparency=0)


def _sixteen_bit():
  pixels = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20)
  return _bytes(Image.fromarray(pixels), format="PNG")


KEPT = {
    "baseline.jpg": (_bytes(_image(), format="JPEG"), "JPEG", "RGB"),
    "progressive.jpg": (_bytes(_image(), format="JPEG", progressive=True), "JPEG", "RGB"),
    "cmyk.jpg": (_bytes(_image("CMYK"), format="JPEG"), "JPEG", "CMYK"),
    "gray.jpg": (_bytes(_image("L"), format="JPEG"), "JPEG", "L"),
    "sixteen.png": (_sixteen_bit(), "PNG", None),
    "palette.png": (_palette_with_transparency(), "PNG", "P"),
    "rgba.png": (_bytes(_image("RGBA"), format="PNG"), "PNG", "RGBA"),
    "webp_named.jpg": (_bytes(_image(), format="WEBP"), "WEBP", "RGB"),
    "gif_named.jpg": (_bytes(_image("P"), format="GIF"), "GIF", "P"),
    "rotated.jpg": (_exif_rotated(), "JPEG", "RGB"),
}

SKIPPED = {
    "empty.jpg": (b"", "empty file"),
    "truncated.jpg": (_bytes(_image(size=(200, 150)), format="JPEG")[:600], "truncated image"),
    "text.jpg": (b"this is not an image\n" * 10, "not an image Pillow can read"),
    "bomb.png": (_bytes(Image.new("1", (8000, 6000)), format="PNG"),
                 "decompression bomb refused"),
}


@pytest.mark.parametrize("name", sorted(KEPT))
@pytest.mark.parametrize("short_side", [None, 32])
def test_odd_files_are_kept_as_decodable_rgb_jpeg(name, short_side):
  data, image_format, mode = KEPT[name]
  result = scan.scan_bytes(source.Entry(f"cane/{name}", 0), data, short_side, encode=True)
  assert result.error == ""
  assert result.format == image_format
  if mode:
    assert result.mode == mode
  decoded = tf.io.decode_jpeg(result.encoded, channels=3).numpy()
  assert decoded.shape[2] == 3
  if short_side:
    assert min(decoded.shape[:2]) == short_side


def test_baseline_rgb_jpeg_keeps_its_bytes_in_full_config():
  data = KEPT["baseline.jpg"][0]
  assert scan.scan_bytes(source.Entry("cane/a.jpg", 0), data, None, True).encoded == data
  progressive = KEPT["progressive.jpg"][0]
  assert scan.scan_bytes(source.Entry("cane/b.jpg", 0), progressive, None, True).encoded != progressive


def test_exif_rotation_is_applied():
  result = scan.scan_bytes(source.Entry("cane/r.jpg", 0), _exif_rotated(), None, True)
  assert (result.width, result.height) == (80, 40)  # as stored
  assert tf.io.decode_jpeg(result.encoded).shape[:2] == (80, 40)  # upright: 40 wide


@pytest.mark.parametrize("name", sorted(SKIPPED))
def test_broken_files_are_skipped_with_a_reason(name):
  data, reason = SKIPPED[name]
  result = scan.scan_bytes(source.Entry(f"cane/{name}", 0), data, None, encode=True)
  assert result.error.startswith(reason), result.error
  assert result.encoded is None


def test_listing_ignores_litter_and_reports_loose_files(tmp_path):
  raw = tmp_path / "raw-img"
  (raw / "cane").mkdir(parents=True)
  (raw / "cane" / "a.jpg").write_bytes(b"x")
  (raw / "cane" / ".DS_Store").write_bytes(b"x")
  (raw / "cane" / "Thumbs.db").write_bytes(b"x")
  (raw / "loose.jpg").write_bytes(b"x")
  entries, skipped = source.Source.find(tmp_path).list()
  assert [entry.path for entry in entries] == ["cane/a.jpg"]
  assert skipped == [{"path": "loose.jpg", "reason": "not inside a class folder"}]


def test_unknown_class_folder_is_a_clear_error(tmp_path):
  (tmp_path / "raw-img" / "cane").mkdir(parents=True)
  (tmp_path / "raw-img" / "lupo").mkdir()
  (tmp_path / "raw-img" / "lupo" / "a.jpg").write_bytes(b"x")
  with pytest.raises(ValueError, match="Move 'lupo' out of .* class folders \(cane, cavallo"):
    source.Source.find(tmp_path).list()


def test_missing_download_says_where_to_get_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="archive.zip.*kaggle"):
    source.Source.find(tmp_path)


def test_kaggle_archive_zip_is_read_in_place(tmp_path):
  good = KEPT["baseline.jpg"][0]
  with zipfile.ZipFile(tmp_path / "archive.zip", "w") as archive:
    archive.writestr("translate.py", "print('Kaggle ships this beside raw-img')")
    archive.writestr("raw-img/cane/a.jpeg", good)
    archive.writestr("raw-img/ragno/b.jpeg", good[:300])
    archive.writestr("raw-img/ragno/.DS_Store", b"\0")
  images = source.Source.find(tmp_path)
  entries, skipped = images.list()
  assert [(entry.path, entry.label) for entry in entries] == [("cane/a.jpeg", 0),
                                                             ("ragno/b.jpeg", 8)]
  assert skipped == []
  results = list(scan.scan(images, entries, encode=True, progress=False))
  assert results[0].encoded == good and results[1].error == "truncated image"
  assert source.Source.find(tmp_path / "archive.zip").archive == str(tmp_path / "archive.zip")


def test_zip_member_with_a_bad_crc_is_skipped_and_listed(tmp_path):
  good = KEPT["baseline.jpg"][0]
  with zipfile.ZipFile(tmp_path / "archive.zip", "w", zipfile.ZIP_STORED) as archive:
    archive.writestr("raw-img/cane/a.jpeg", good)
    archive.writestr("raw-img/cane/b.jpeg", good + b"b")
  data = bytearray((tmp_path / "archive.zip").read_bytes())
  where = data.rfind(good + b"b")  # b's stored bytes: flip one, its CRC-32 fails
  data[where + 100] ^= 0xFF
  (tmp_path / "archive.zip").write_bytes(bytes(data))
  images = source.Source.find(tmp_path)
  entries, _ = images.list()
  results = list(scan.scan(images, entries, encode=True, progress=False))
  assert results[0].encoded == good and not results[0].error
  assert results[1].error.startswith("unreadable: Bad CRC-32 for file 'raw-img/cane/b.jpeg'")


def test_zip_that_cannot_be_opened_is_one_line_naming_it(tmp_path):
  with zipfile.ZipFile(tmp_path / "archive.zip", "w") as archive:
    archive.writestr("raw-img/cane/a.jpeg", KEPT["baseline.jpg"][0])
  whole = (tmp_path / "archive.zip").read_bytes()
  (tmp_path / "archive.zip").write_bytes(whole[:len(whole) // 2])  # download cut short
  with pytest.raises(ValueError, match=r"^Download .*archive.zip again .*cannot be opened"):
    source.Source.find(tmp_path)


def test_directory_link_back_into_the_tree_is_not_followed(tmp_path):
  raw = tmp_path / "raw-img"
  (raw / "cane").mkdir(parents=True)
  (raw / "gatto").mkdir()
  (raw / "cane" / "a.jpg").write_bytes(b"x")
  (raw / "cane" / "loop").symlink_to("../cane")
  (raw / "gatto" / "dogs").symlink_to("../cane")
  outside = tmp_path / "elsewhere"
  outside.mkdir()
  (outside / "b.jpg").write_bytes(b"x")
  (outside / "up").symlink_to("..")  # a loop outside the tree
  (raw / "gatto" / "more").symlink_to(outside)
  entries, skipped = source.Source.find(tmp_path).list()
  assert [entry.path for entry in entries] == ["cane/a.jpg", "gatto/more/b.jpg"]
  assert [item["path"] for item in skipped] == ["cane/loop", "gatto/dogs", "gatto/more/up"]
  assert {item["reason"] for item in skipped} == {
      "link to a folder already in the tree, not followed"}


def test_class_folders_without_files_say_what_to_do(tmp_path):
  (tmp_path / "raw-img" / "cane").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match=r"^Put Kaggle's archive.zip .*hold no files"):
    source.Source.find(tmp_path).list()


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_scan_workers_exit_when_the_build_is_killed(tmp_path):
  # kill -9 of a build used to leave its workers waiting on their queue forever.
  for index in range(80):
    folder = tmp_path / "raw-img" / source.FOLDERS[index % 10]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{index}.jpg").write_bytes(KEPT["baseline.jpg"][0])
  script = ("import sys, time\n"
            "from animals10_tfds import scan, source\n"
            "images = source.Source.find(sys.argv[1])\n"
            "results = scan.scan(images, images.list()[0], workers=2, progress=False)\n"
            "next(results)\n"
            "print('scanning', flush=True)\n"
            "time.sleep(600)\n")
  parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
  try:
    assert parent.stdout.readline().strip() == "scanning"
    workers = processes.pool_workers(parent.pid)
    assert len(workers) >= 2
  finally:
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
  alive = processes.still_running(workers, seconds=20)
  assert not alive, f"orphaned scan workers {alive}"


def test_a_decompression_bomb_in_the_archive_is_skipped_unread(tmp_path):
  """A member that inflates past the cap is refused by its declared size, before a byte
  of it is inflated; the good member beside it is kept."""
  good = KEPT["baseline.jpg"][0]
  with zipfile.ZipFile(tmp_path / "archive.zip", "w", zipfile.ZIP_DEFLATED) as archive:
    archive.writestr("raw-img/cane/a.jpeg", good)
    with archive.open("raw-img/cane/bomb.jpg", "w", force_zip64=True) as member:
      zeros = bytes(1 << 20)
      for _ in range(source.MAX_FILE_BYTES // len(zeros) + 1):
        member.write(zeros)
  assert (tmp_path / "archive.zip").stat().st_size < 1 << 20
  images = source.Source.find(tmp_path)
  entries, _ = images.list()
  results = list(scan.scan(images, entries, encode=True, progress=False))
  assert results[0].encoded == good and not results[0].error
  assert results[1].error.startswith("larger than 100 MB (100,")


def test_the_read_is_bounded_whatever_a_size_field_claims(monkeypatch):
  monkeypatch.setattr(source, "MAX_FILE_BYTES", 1000)
  assert source._bounded(io.BytesIO(bytes(1000))) == bytes(1000)  # pylint: disable=W0212
  with pytest.raises(source.TooLarge, match="or more"):
    source._bounded(io.BytesIO(bytes(5000)))  # pylint: disable=W0212


def test_a_huge_file_on_disk_is_skipped_by_its_size(tmp_path):
  folder = tmp_path / "raw-img" / "cane"
  folder.mkdir(parents=True)
  (folder / "a.jpeg").write_bytes(KEPT["baseline.jpg"][0])
  with open(folder / "huge.jpg", "wb") as file:
    file.truncate(source.MAX_FILE_BYTES + 1)  # sparse: takes no disk
  images = source.Source.find(tmp_path)
  entries, _ = images.list()
  results = list(scan.scan(images, entries, encode=True, progress=False))
  assert not results[0].error and results[1].error.startswith("larger than 100 MB")
