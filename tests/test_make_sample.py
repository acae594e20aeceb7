"""The generated sample looks like Animals-10 to our code."""

import collections
import io
import os

import numpy as np
from PIL import Image

from animals10_tfds import source
from tools import make_sample


def test_full_scale_plan_has_the_real_counts_and_odd_share():
  tasks = make_sample.plan(make_sample.FULL_SCALE_COUNTS, seed=0)
  assert len(tasks) == 26179
  counts = collections.Counter(task.folder for task in tasks)
  assert counts["cane"] == 4863 and counts["elefante"] == 1446
  assert sum(1 for task in tasks if task.odd_kind) == 51


def test_resolution_mix_matches_the_real_set():
  rng = np.random.default_rng(0)
  sizes = [make_sample._resolution(rng) for _ in range(20000)]  # pylint: disable=protected-access
  counts = collections.Counter(sizes)
  assert counts.most_common(1)[0][0] == (300, 225)
  assert abs(counts[(300, 225)] / 20000 - .17) < .015
  landscape = sum(1 for width, height in sizes if width > height) / 20000
  assert .76 < landscape < .84
  assert sum(1 for count in counts.values() if count >= 200) == 16
  assert len(counts) > 300  # a long tail of rare resolutions


def test_same_seed_same_bytes_and_names(tmp_path):
  for name in ("a", "b"):
    make_sample.make_sample(str(tmp_path / name), make_sample.counts_for(3, False), seed=5)
  files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
  files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.*"))
  assert files_a == files_b and len(files_a) == 30
  assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
             for f in files_a)


def test_sample_files_are_realistic(sample_dir):
  raw = sample_dir / "raw-img"
  assert sorted(os.listdir(raw)) == sorted(source.FOLDERS)
  files = [path for path in raw.rglob("*") if path.is_file()]
  assert len(files) == 400
  sizes = [path.stat().st_size for path in files]
  assert 10_000 < np.median(sizes) < 120_000
  names = [path.name for path in files]
  assert any(name.startswith("OIP-") and name.endswith(".jpeg") for name in names)
  assert any(name.endswith("_640.jpg") for name in names)
  odd = [path for path in files if Image.open(path).format != "JPEG"
         or Image.open(path).mode != "RGB"]
  assert 1 <= len(odd) <= 3
  Image.open(io.BytesIO(files[0].read_bytes())).verify()
