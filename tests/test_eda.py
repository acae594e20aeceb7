"""tools.eda on a small tree with odd and broken files, and from the built dataset."""

import io
import shutil

import pandas as pd
from PIL import Image
import pytest

from tools import eda


@pytest.fixture(scope="module")
def odd_tree(sample_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp("odd")
  shutil.copytree(sample_dir / "raw-img", root / "raw-img")
  cats = root / "raw-img" / "gatto"
  first = sorted(cats.iterdir())[0]
  shutil.copy(first, cats / "zz_exact_copy.jpeg")
  image = Image.open(first).convert("RGB")
  buffer = io.BytesIO()
  image.resize((image.width // 2, image.height // 2)).save(buffer, "JPEG", quality=70)
  (cats / "zz_small_copy.jpg").write_bytes(buffer.getvalue())
  (cats / "zz_empty.jpg").write_bytes(b"")
  (cats / "zz_text.jpg").write_text("not an image")
  (cats / ".DS_Store").write_bytes(b"\0")
  image.convert("CMYK").save(cats / "zz_cmyk.jpg", "JPEG")
  return root, first.name


def test_raw_table_report_and_plots(odd_tree, tmp_path):
  root, first_name = odd_tree
  table, groups = eda.table_from_raw(str(root / "raw-img"), workers=2, progress=False)
  report = eda.run(table, groups, str(tmp_path), seconds=1.0)
  written = pd.read_csv(tmp_path / "images.csv", keep_default_na=False)
  assert list(written.columns) == list(eda.COLUMNS)
  assert len(written) == 405  # 400 + copy + small copy + cmyk + 2 broken; .DS_Store ignored
  errors = dict(zip(written.path, written.error))
  assert errors["gatto/zz_empty.jpg"] == "empty file"
  assert errors["gatto/zz_text.jpg"] == "not an image Pillow can read"
  cmyk = written[written.path == "gatto/zz_cmyk.jpg"].iloc[0]
  assert (cmyk["mode"], cmyk["format"], cmyk["label"]) == ("CMYK", "JPEG", "cat")
  assert "Exact (same SHA-256): 1 files are copies, in 1 sets." in report
  assert any(f"gatto/{first_name}" in group and "gatto/zz_small_copy.jpg" in group
             for group in groups)
  assert "| cat | 43 |" in report  # 40 + exact copy + small copy + cmyk
  assert "## Unreadable files" in report and "gatto/zz_text.jpg" in report
  for name in ("labels.png", "resolutions.png", "orientation.png", "mode_format.png"):
    data = (tmp_path / name).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    Image.open(tmp_path / name).verify()


def test_from_tfds_matches_raw_scan(sample_dir, data_dir):
  raw, _ = eda.table_from_raw(str(sample_dir), workers=1, progress=False)
  built, groups = eda.table_from_tfds("animals10_tfds/160px", str(data_dir))
  columns = ["path", "hash", "width", "height", "mode", "format", "orientation", "label",
             "phash"]
  pd.testing.assert_frame_equal(raw[columns].sort_values("path", ignore_index=True),
                                built[columns].sort_values("path", ignore_index=True),
                                check_dtype=False)
  assert groups == []
