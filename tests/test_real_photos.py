"""The builder, the EDA and the trainer on 499 real photographs (../shared/data/real-photos).

Real files no generator of ours made: RGBA PNGs, MPO camera files named .jpg, a
PNG named .jpg, 56 px thumbnails, 6,596 px originals, ICC profiles and 7
byte-identical copies. A user's clone has no ../shared: every test here skips then.
"""

import json
import os

import pytest
import tensorflow as tf

from conftest import REAL
from conftest import needs_real_photos

# Building 499 real photos (up to 6,596 px) in both configs: slow (CI runs it).
pytestmark = [pytest.mark.slow, needs_real_photos]

FILES = 499
IDENTICAL_COPIES = 7


@pytest.mark.parametrize("config", ["full", "160px"])
def test_every_real_photo_is_kept_or_a_counted_duplicate(real_data_dir, config):
  from trainers.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  from trainers.data import records as records_lib  # pylint: disable=g-import-not-at-top
  builder = dataset_lib.builder(f"animals10_tfds/{config}", str(real_data_dir))
  metadata = json.loads((builder.data_path / "metadata.json").read_text())
  records = sum(split.num_examples for split in builder.info.splits.values())
  assert metadata["skipped"] == []  # no good file lost
  assert len(metadata["duplicates"]) == IDENTICAL_COPIES
  assert records == FILES - IDENTICAL_COPIES == 492
  for split in ("train", "validation", "test"):
    for record in records_lib.records(builder, split):
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
  from trainers.training import train  # pylint: disable=g-import-not-at-top
  result = train.train_and_evaluate(config_lib.Config(
      model="cnn2", model_dir=str(tmp_path / "run"), data_dir=str(real_data_dir),
      image_size=64, batch_size=32, epochs=1, weights="none"))
  assert result["test_images"] == 94
  assert sum(row["support"] for row in result["per_class"].values()) == 94


def test_the_study_s_format_filters_leave_classes_empty_and_say_so(real_data_dir):
  from trainers.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  from trainers.data import records as records_lib  # pylint: disable=g-import-not-at-top
  from trainers.data import split_plan  # pylint: disable=g-import-not-at-top
  builder = dataset_lib.builder("animals10_tfds/160px", str(real_data_dir))
  filters = records_lib.Filters(formats=("JPEG",), modes=("RGB",))
  with pytest.raises(ValueError, match=r"the train split has no .*dog.* image: rebuild the "
                                       r"dataset with every class, loosen --keep_formats"):
    split_plan.plan(builder, filters, "none", 4)
  plan = split_plan.plan(builder, filters, "none", 4, allow_empty_classes=True)
  assert 0 < plan.counts["train"] < 347  # of 347 train images, the JPEG+RGB ones
