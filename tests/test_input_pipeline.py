"""The input pipeline: labels match, filters and balancing count right, decoding is exact."""

import dataclasses
import io

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from animals10_tfds import source
from trainers.data import input_pipeline
from trainers.data import dataset as dataset_lib
from trainers.data import records as records_lib
from trainers.data import split_plan
from trainers.modeling import models


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
  assert batch[0].shape == (8, 64, 64, 3) and batch[0].dtype == tf.uint8
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
  # Smaller than the target: decoded at full scale (no DCT downscaling), centre
  # cropped, then upscaled, as a full decode and resize gives it. Pixel noise
  # shows a lost scale: decoding this image at 1/2 scale differs by about 22.
  pixels = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
  data = tf.constant(buffer.getvalue())
  image = input_pipeline.decode_and_resize(data, 100, "crop")
  full = tf.image.crop_to_bounding_box(tf.image.decode_jpeg(data, channels=3), 0, 8, 64, 64)
  reference = tf.cast(tf.round(tf.image.resize(full, (100, 100), antialias=True)), tf.uint8)
  assert image.shape == (100, 100, 3)
  difference = np.abs(image.numpy().astype(int) - reference.numpy().astype(int))
  assert difference.mean() < 3


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


def test_a_batch_decodes_exactly_as_its_images_one_by_one(builder):
  encoded = [record["image"] for record in records_lib.records(builder, "train").take(16)]
  one_by_one = np.stack([input_pipeline.decode_and_resize(data, 40, "crop").numpy()
                         for data in encoded])
  batch = input_pipeline.decode_batch(tf.stack(encoded), 40, "crop")
  assert batch.dtype == tf.uint8 and batch.shape == (16, 40, 40, 3)
  np.testing.assert_array_equal(batch.numpy(), one_by_one)
  stream = input_pipeline.TrainingStream(batch_size=8, steps_per_epoch=2, epochs=1,
                                         image_size=40)
  images, labels = next(iter(input_pipeline.training_batches(
      records_lib.records(builder, "train"), stream)))
  assert images.dtype == tf.uint8 and images.shape == (8, 40, 40, 3) and labels.shape == (8,)


def test_the_model_takes_uint8_batches_as_their_float32_values(builder):
  """The streams hand uint8 images over; the model casts them at its input, so it
  computes exactly what it would on float32 pixels (training step included)."""
  stream = input_pipeline.TrainingStream(batch_size=8, steps_per_epoch=1, epochs=1,
                                         image_size=40, seed=3)
  images, labels = next(iter(input_pipeline.training_batches(
      records_lib.records(builder, "train"), stream)))
  as_float = tf.cast(images, tf.float32)
  model = models.build_model("cnn2", 40, seed=0)
  np.testing.assert_array_equal(model(images).numpy(), model(as_float).numpy())
  model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
  weights = model.get_weights()
  after = []
  for batch in (images, as_float):
    model.set_weights(weights)
    model.train_on_batch(batch, labels)
    after.append(model.get_weights())
  for from_uint8, from_float in zip(*after):
    np.testing.assert_array_equal(from_uint8, from_float)


def test_the_shuffle_buffer_holds_at_most_one_pass(builder):
  records = records_lib.records(builder, "train")
  count = len(records_lib.labels_and_names(records)[0])
  stream = input_pipeline.TrainingStream(batch_size=count, steps_per_epoch=1, epochs=2, seed=1,
                                         image_size=32, record_bytes=100, pass_records=count)
  assert stream.shuffle_buffer() == count
  assert dataclasses.replace(stream, pass_records=None).shuffle_buffer() == (
      input_pipeline.SHUFFLE_BUFFER[1])
  passes = [labels.numpy().tolist() for _, labels in
            input_pipeline.training_batches(records, stream)]
  assert sorted(passes[0]) == sorted(passes[1]) == sorted(
      records_lib.labels_and_names(records)[0].tolist())
  # Only less is read ahead: the order is the one a buffer of many passes gave.
  assert passes == [labels.numpy().tolist() for _, labels in input_pipeline.training_batches(
      records, dataclasses.replace(stream, pass_records=None))]


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


