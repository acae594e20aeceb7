"""The input pipeline: labels match, filters and balancing count right, decoding is exact."""

import dataclasses
import io

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from animals10_tfds import source
from trainers import input_pipeline
from trainers import dataset as dataset_lib
from trainers import records as records_lib
from trainers import split_plan


@pytest.fixture(scope="module")
def builder(data_dir):
  return dataset_lib.builder("animals10_tfds/160px", str(data_dir))


def test_images_and_labels_match_their_files(builder):
  records = records_lib.records(builder, "train")
  labels, names = records_lib.labels_and_names(records)
  assert all(source.FOLDERS.index(name.split("/")[0]) == label
             for label, name in zip(labels, names))
  plan = split_plan.EvalPlan(len(labels), batch_size=8)
  batch = next(iter(input_pipeline.eval_batches(records, plan, image_size=64)))
  assert batch[0].shape == (8, 64, 64, 3) and batch[0].dtype == tf.float32
  np.testing.assert_array_equal(batch[1].numpy(), labels[:8])


def test_filters_keep_only_matching_records(builder):
  all_labels, _ = records_lib.labels_and_names(records_lib.records(builder, "train"))
  landscape = records_lib.Filters(orientations=("landscape",))
  labels, names = records_lib.labels_and_names(
      records_lib.records(builder, "train", landscape))
  orientations = {record["file_name"].numpy().decode(): record["orientation"].numpy().decode()
                  for record in builder.as_dataset(
                      split="train", decoders={"image": tfds.decode.SkipDecoding()})}
  assert len(labels) == sum(1 for value in orientations.values() if value == "landscape")
  assert 0 < len(labels) < len(all_labels)
  jpeg_rgb = records_lib.Filters(formats=("JPEG",), modes=("RGB",))
  _, kept = records_lib.labels_and_names(records_lib.records(builder, "train", jpeg_rgb))
  originals = {record["file_name"].numpy().decode(): (record["format"].numpy().decode(),
                                                      record["mode"].numpy().decode())
               for record in builder.as_dataset(
                   split="train", decoders={"image": tfds.decode.SkipDecoding()})}
  assert sorted(kept) == sorted(name for name, value in originals.items()
                                if value == ("JPEG", "RGB"))
  assert kept
  nothing = records_lib.Filters(formats=("TIFF",))
  assert not len(records_lib.labels_and_names(
      records_lib.records(builder, "train", nothing))[0])


def test_undersample_cuts_every_class_to_the_smallest(builder):
  labels, names = records_lib.labels_and_names(records_lib.records(builder, "train"))
  keep = split_plan.undersample(labels, names, 10)
  kept_labels, _ = records_lib.labels_and_names(
      records_lib.records(builder, "train", keep_names=keep))
  smallest = np.bincount(labels, minlength=10).min()
  assert np.bincount(kept_labels, minlength=10).tolist() == [smallest] * 10
  assert sorted(keep) == sorted(split_plan.undersample(labels[::-1], names[::-1], 10))


def test_plan_counts_balanced_splits_and_steps_once(builder):
  plan = split_plan.plan(builder, records_lib.Filters(), "undersample", batch_size=16,
                             workers=2, steps_per_epoch=0)
  for split in split_plan.SPLITS:
    labels, names = records_lib.labels_and_names(records_lib.records(builder, split))
    present = np.bincount(labels, minlength=10)
    present = present[present > 0]  # a small split may lack a class: it is not balanced in
    assert plan.counts[split] == len(present) * present.min() == len(plan.keep[split])
    assert set(plan.keep[split]) <= set(names)
  assert plan.steps == plan.counts["train"] // 16 and plan.worker_batch == 8
  assert plan.class_weight is None and plan.eval_plan("test").count == plan.counts["test"]
  weighted = split_plan.plan(builder, records_lib.Filters(), "class_weight",
                                 batch_size=16, steps_per_epoch=3)
  assert weighted.keep["train"] is None and weighted.steps == 3
  assert len(weighted.class_weight) == 10 and min(weighted.class_weight) > 0
  with pytest.raises(ValueError, match="--batch_size=100000 is larger"):
    split_plan.plan(builder, records_lib.Filters(), "none", batch_size=100_000)
  with pytest.raises(ValueError, match="No train images left"):
    split_plan.plan(builder, records_lib.Filters(formats=("TIFF",)), "none", 16)


def test_class_weights_are_inverse_frequency():
  weights = split_plan.class_weights(np.array([0, 0, 0, 1]), 2)
  assert weights == {0: 4 / 6, 1: 2.0}


def _jpeg(width, height):
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
  image = Image.fromarray(pixels).resize((width, height), Image.Resampling.BILINEAR)
  buffer = io.BytesIO()
  image.save(buffer, "JPEG", quality=95)
  return buffer.getvalue()


@pytest.mark.parametrize("resize", ["crop", "stretch"])
def test_dct_scaled_decode_matches_full_decode(resize):
  data = tf.constant(_jpeg(640, 480))
  fast = input_pipeline.decode_and_resize(data, 100, resize)  # decodes at 1/4 scale
  full = tf.image.decode_jpeg(data, channels=3)
  if resize == "crop":
    full = tf.image.crop_to_bounding_box(full, 0, 80, 480, 480)
  reference = tf.cast(tf.round(tf.image.resize(full, (100, 100), antialias=True)), tf.uint8)
  assert fast.shape == (100, 100, 3)
  difference = np.abs(fast.numpy().astype(int) - reference.numpy().astype(int))
  assert difference.mean() < 3


def test_small_images_are_upscaled_not_overscaled():
  image = input_pipeline.decode_and_resize(tf.constant(_jpeg(80, 64)), 100, "crop")
  assert image.shape == (100, 100, 3)


def test_a_resumed_stream_gives_the_batches_of_an_uninterrupted_one(builder):
  records = records_lib.records(builder, "train")
  stream = input_pipeline.TrainingStream(batch_size=16, steps_per_epoch=2, epochs=3, seed=3,
                                         image_size=32, deterministic=True)
  full = [labels.numpy().tolist() for _, labels in
          input_pipeline.training_batches(records, stream)]
  resumed = [labels.numpy().tolist() for _, labels in input_pipeline.training_batches(
      records, dataclasses.replace(stream, first_epoch=1))]
  assert len(full) == 6 and full[2:] == resumed
  assert full[0:2] != full[2:4]  # each epoch is shuffled differently


def test_exclude_leaves_listed_records_out_of_train_and_validation(builder, tmp_path):
  train_labels, train_names = records_lib.labels_and_names(records_lib.records(builder, "train"))
  _, test_names = records_lib.labels_and_names(records_lib.records(builder, "test"))
  listed = train_names[:3] + test_names[:1]
  plan = split_plan.plan(builder, records_lib.Filters(), "none", 16, exclude=listed)
  assert plan.excluded == {"train": 3, "validation": 0, "test": 0}
  assert plan.counts["train"] == len(train_names) - 3
  assert not set(listed[:3]) & set(plan.keep["train"]) and plan.keep["test"] is None
  with_test = split_plan.plan(builder, records_lib.Filters(), "none", 16, exclude=listed,
                              exclude_test=True)
  assert with_test.excluded["test"] == 1 and test_names[0] not in with_test.keep["test"]
  with pytest.raises(ValueError, match=r"--exclude names 1 file\(s\) that match no record .*"
                                       r"'cane/typo.jpg': fix the list"):
    split_plan.plan(builder, records_lib.Filters(), "none", 16,
                    exclude=listed + ["cane/typo.jpg"])


def test_an_exclude_file_is_a_file_name_column_or_a_plain_list(tmp_path):
  from trainers import config as config_lib  # pylint: disable=g-import-not-at-top
  audit = tmp_path / "audit.csv"
  audit.write_text("file_name,split,label,issue\ncane/b.jpg,train,dog,label\n"
                   "cane/a.jpg,test,dog,outlier\ncane/b.jpg,train,dog,near_duplicate\n")
  plain = tmp_path / "list.txt"
  plain.write_text("# mine\ncane/a.jpg\n\ncane/b.jpg\n")
  names, digest = config_lib.read_exclude(str(audit))
  assert names == ("cane/a.jpg", "cane/b.jpg") and len(digest) == 64
  assert config_lib.read_exclude(str(plain)) == (names, digest)
  (tmp_path / "empty.csv").write_text("file_name\n")
  with pytest.raises(ValueError, match="names no file"):
    config_lib.read_exclude(str(tmp_path / "empty.csv"))
  with pytest.raises(ValueError, match="cannot be read"):
    config_lib.read_exclude(str(tmp_path / "missing.csv"))
  with pytest.raises(ValueError, match="--exclude_test needs --exclude"):
    config_lib.Config(model="cnn2", model_dir=str(tmp_path), exclude_test=True)
  # A run without --exclude keeps the settings hash older versions gave it.
  plain_config = config_lib.Config(model="cnn2", model_dir=str(tmp_path))
  listed = config_lib.Config(model="cnn2", model_dir=str(tmp_path), exclude=names,
                             exclude_sha256=digest)
  assert config_lib.settings_sha256(plain_config) != config_lib.settings_sha256(listed)
