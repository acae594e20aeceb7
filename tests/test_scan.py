"""Odd and broken files: each kept as a decodable RGB JPEG or skipped with a reason."""

import io

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from animals10_tfds import scan


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
  result = scan.scan_bytes(scan.Entry(f"cane/{name}", 0), data, short_side, encode=True)
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
  assert scan.scan_bytes(scan.Entry("cane/a.jpg", 0), data, None, True).encoded == data
  progressive = KEPT["progressive.jpg"][0]
  assert scan.scan_bytes(scan.Entry("cane/b.jpg", 0), progressive, None, True).encoded != progressive


def test_exif_rotation_is_applied():
  result = scan.scan_bytes(scan.Entry("cane/r.jpg", 0), _exif_rotated(), None, True)
  assert (result.width, result.height) == (80, 40)  # as stored
  assert tf.io.decode_jpeg(result.encoded).shape[:2] == (80, 40)  # upright: 40 wide


@pytest.mark.parametrize("name", sorted(SKIPPED))
def test_broken_files_are_skipped_with_a_reason(name):
  data, reason = SKIPPED[name]
  result = scan.scan_bytes(scan.Entry(f"cane/{name}", 0), data, None, encode=True)
  assert result.error.startswith(reason), result.error
  assert result.encoded is None


def test_listing_ignores_litter_and_reports_loose_files(tmp_path):
  raw = tmp_path / "raw-img"
  (raw / "cane").mkdir(parents=True)
  (raw / "cane" / "a.jpg").write_bytes(b"x")
  (raw / "cane" / ".DS_Store").write_bytes(b"x")
  (raw / "cane" / "Thumbs.db").write_bytes(b"x")
  (raw / "loose.jpg").write_bytes(b"x")
  entries, skipped = scan.Source.find(tmp_path).list()
  assert [entry.path for entry in entries] == ["cane/a.jpg"]
  assert skipped == [{"path": "loose.jpg", "reason": "not inside a class folder"}]


def test_unknown_class_folder_is_a_clear_error(tmp_path):
  (tmp_path / "raw-img" / "cane").mkdir(parents=True)
  (tmp_path / "raw-img" / "lupo").mkdir()
  (tmp_path / "raw-img" / "lupo" / "a.jpg").write_bytes(b"x")
  with pytest.raises(ValueError, match="Unknown class folder 'lupo'.*cane, cavallo"):
    scan.Source.find(tmp_path).list()


def test_missing_download_says_where_to_get_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="archive.zip.*kaggle"):
    scan.Source.find(tmp_path)


def test_kaggle_archive_zip_is_read_in_place(tmp_path):
  import zipfile  # pylint: disable=g-import-not-at-top
  good = KEPT["baseline.jpg"][0]
  with zipfile.ZipFile(tmp_path / "archive.zip", "w") as archive:
    archive.writestr("translate.py", "print('Kaggle ships this beside raw-img')")
    archive.writestr("raw-img/cane/a.jpeg", good)
    archive.writestr("raw-img/ragno/b.jpeg", good[:300])
    archive.writestr("raw-img/ragno/.DS_Store", b"\0")
  source = scan.Source.find(tmp_path)
  entries, skipped = source.list()
  assert [(entry.path, entry.label) for entry in entries] == [("cane/a.jpeg", 0),
                                                             ("ragno/b.jpeg", 8)]
  assert skipped == []
  results = list(scan.scan(source, entries, encode=True, progress=False))
  assert results[0].encoded == good and results[1].error == "truncated image"
  assert scan.Source.find(tmp_path / "archive.zip").archive == str(tmp_path / "archive.zip")
