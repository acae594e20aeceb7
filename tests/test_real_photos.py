"""The builder, the EDA and the trainer on 499 real photographs (../shared/data/real-photos).

Real files no generator of ours made: RGBA PNGs, MPO camera files named .jpg, a
PNG named .jpg, 56 px thumbnails, 6,596 px originals, ICC profiles and 7
byte-identical copies. A user's clone has no ../shared: every test here skips then.
"""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL = os.path.join(os.path.dirname(REPO), "shared", "data", "real-photos")
pytestmark = pytest.mark.skipif(
    not os.path.isdir(os.path.join(REAL, "raw-img")),
    reason=f"no real photos at {REAL} (only the project's workplace has ../shared)")

FILES = 499
IDENTICAL_COPIES = 7


@pytest.fixture(scope="module")
def real_data_dir(tmp_path_factory):
  data = tmp_path_factory.mktemp("real_tensorflow_datasets")
  subprocess.run([os.path.join(os.path.dirname(sys.executable), "tfds"), "build",
                  "animals10_tfds", f"--manual_dir={REAL}", f"--data_dir={data}"],
                 cwd=REPO, check=True, capture_output=True)
  return data


@pytest.mark.parametrize("config", ["full", "160px"])
def test_every_real_photo_is_kept_or_a_counted_duplicate(real_data_dir, config):
  from trainers import input_pipeline  # pylint: disable=g-import-not-at-top
  builder = input_pipeline.builder(f"animals10_tfds/{config}", str(real_data_dir))
  metadata = json.loads((builder.data_path / "metadata.json").read_text())
  records = sum(split.num_examples for split in builder.info.splits.values())
  assert metadata["skipped"] == []  # no good file lost
  assert len(metadata["duplicates"]) == IDENTICAL_COPIES
  assert records == FILES - IDENTICAL_COPIES == 492
  for split in ("train", "validation", "test"):
    for record in input_pipeline.records(builder, split):
      image = tf.io.decode_jpeg(record["image"], channels=3)
      assert image.shape[0] > 0 and image.shape[1] > 0 and image.shape[2] == 3


def test_eda_reads_every_real_photo(tmp_path):
  from tools import eda  # pylint: disable=g-import-not-at-top
  table, _ = eda.table_from_raw(os.path.join(REAL, "raw-img"), workers=2, progress=False)
  eda.run(table, [], str(tmp_path), seconds=1.0)
  assert len(table) == FILES and not table.error.astype(bool).any()
  assert {"MPO", "PNG", "JPEG"} <= set(table.format)
  assert (tmp_path / "report.md").exists()


def test_one_cnn2_epoch_on_the_real_photos(real_data_dir, tmp_path):
  from trainers import config as config_lib  # pylint: disable=g-import-not-at-top
  from trainers import train  # pylint: disable=g-import-not-at-top
  result = train.train_and_evaluate(config_lib.Config(
      model="cnn2", model_dir=str(tmp_path / "run"), data_dir=str(real_data_dir),
      image_size=64, batch_size=32, epochs=1, weights="none"))
  assert result["test_images"] == 94
  assert sum(row["support"] for row in result["per_class"].values()) == 94
