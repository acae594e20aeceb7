"""Cached backbone features: the same training as the plain path, resumable, saved whole."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainers import config as config_lib
from trainers.training import feature_cache
from trainers.data import input_pipeline
from trainers.data import dataset as dataset_lib
from trainers.data import records as records_lib
import trainer_runs
from trainers.training import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tests that build and trace transfer models take minutes on 2 cores: marked slow
# (CI runs them); the feature files' own checks are fast.
# float32 and deterministic ops, so both paths can be compared to float noise.
# DenseNet121: without pretrained weights MobileNetV2's features are all ~1e-12,
# DenseNet's vary from image to image, so its head learns and the order counts.
SETTINGS = dict(model="dn121", image_size=32, batch_size=16, epochs=3, learning_rate=0.03,
                seed=4, deterministic=True, precision="float32", weights="none",
                early_stopping_patience=2)


@pytest.fixture(scope="module")
def both_paths(data_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp("feature_cache")
  runs = {}
  for cached in (True, False):
    folder = root / ("cached" if cached else "plain")
    result = train.train_and_evaluate(config_lib.Config(
        model_dir=str(folder), data_dir=str(data_dir), cache_features=cached, **SETTINGS))
    runs[cached] = (folder, result)
  return runs


@pytest.mark.slow
def test_head_on_cached_features_trains_as_the_whole_model_does(both_paths):
  (_, cached), (_, plain) = both_paths[True], both_paths[False]
  assert cached["phases"]["train"]["cached_features"] is True
  assert plain["phases"]["train"]["cached_features"] is False
  assert cached["loss_train"] < np.log(10) - 0.01  # it learned: batches and their order count
  assert abs(cached["accuracy_test"] - plain["accuracy_test"]) <= 0.01
  assert cached["loss_train"] == pytest.approx(plain["loss_train"], rel=0.01)
  assert cached["val_loss_train"] == pytest.approx(plain["val_loss_train"], rel=0.01)


@pytest.mark.slow
def test_model_saved_after_cached_training_predicts_as_the_trained_one(both_paths, data_dir):
  folder, result = both_paths[True]
  assert not (folder / "features").exists()  # the cache goes with the phase
  model = keras.saving.load_model(folder / "model.keras", safe_mode=True)
  builder = dataset_lib.builder("animals10_tfds/160px", str(data_dir))
  records = records_lib.records(builder, "test")
  labels, names = records_lib.labels_and_names(records)
  probabilities = model.predict(
      input_pipeline.images(records, SETTINGS["image_size"], "crop").batch(32).map(
          lambda image, label: keras.ops.cast(image, "float32")).apply(
              tf.data.experimental.assert_cardinality(-(-len(labels) // 32))), verbose=0)
  with open(folder / "predictions.csv", newline="") as file:
    rows = list(csv.DictReader(file))
  classes = builder.info.features["label"].names
  assert [row["file_name"] for row in rows] == names
  assert [row["prediction"] for row in rows] == [classes[i] for i in probabilities.argmax(1)]
  assert result["accuracy_test"] == pytest.approx(np.mean(probabilities.argmax(1) == labels))


@pytest.mark.slow
def test_killed_during_extraction_the_same_command_resumes_to_the_same_result(
    both_paths, data_dir, tmp_path):
  run = tmp_path / "killed"
  args = [sys.executable, "-m", "trainers.main", f"--data_dir={data_dir}",
          f"--model_dir={run}"] + [
              f"--{key}={value}" if not isinstance(value, bool) else f"--{key}"
              for key, value in SETTINGS.items()]
  process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  folder = run / "features" / "train"
  deadline = time.time() + 240
  while time.time() < deadline and process.poll() is None:
    if (folder / "train.meta.json").exists():  # train split saved, validation not yet
      break
    time.sleep(0.01)
  os.kill(process.pid, signal.SIGKILL)
  process.wait()
  assert (folder / "train.meta.json").exists()
  assert not (folder / "validation.labels.npy").exists(), "killed after the extraction"
  resumed = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  _, uninterrupted = both_paths[True]
  assert (trainer_runs.without_clock(json.loads((run / "metrics.json").read_text()))
          == trainer_runs.without_clock(uninterrupted))


@pytest.mark.parametrize("overrides,reason", [
    (dict(), None),
    (dict(augment="study"), "--augment=study"),
    (dict(augment="randaugment"), "--augment=randaugment"),
    (dict(mixup=0.2), "--mixup"),
    (dict(cutmix=1.0), "--cutmix"),
    # The recipe of the head's training leaves the backbone's output unchanged.
    (dict(label_smoothing=0.1, optimizer="adamw", weight_decay=0.05, schedule="cosine",
          warmup_epochs=1, ema=True, tta=True), None),
    (dict(cache_features=False), "--nocache_features"),
    (dict(model="cnn2"), "no frozen backbone"),
    # Fine-tuning too: its bottom stays frozen (where the cut is: cutting.split_at_cut).
    (dict(fine_tune=True), None),
    (dict(steps_per_epoch=1), "fewer than one pass"),
])
def test_features_are_cached_only_where_the_backbone_output_never_changes(overrides, reason):
  config = config_lib.Config(**{**SETTINGS, "model_dir": "unused", **overrides})
  steps = config.steps_per_epoch or 20
  found = feature_cache.reason_not_cached(config, images_trained=config.epochs * steps
                                          * config.batch_size, train_images=300)
  assert found is None if reason is None else reason in found


@pytest.fixture(scope="module")
def saved_splits(data_dir, tmp_path_factory):
  """Features of the train and validation splits saved by `extract` with a tiny
  extractor (mean colour), and a function that extracts a split again."""
  builder = dataset_lib.builder("animals10_tfds/160px", str(data_dir))
  inputs = keras.Input((16, 16, 3))
  extractor = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
  folder = tmp_path_factory.mktemp("features")

  def extract(split, settings="run-a"):
    return feature_cache.extract(extractor, records_lib.records(builder, split),
                                 folder=str(folder), split=split, batch_size=8, image_size=16,
                                 resize="crop", settings_sha256=settings)

  saved = {split: np.array(extract(split).features) for split in ("train", "validation")}
  return folder, saved, extract


def _damage(folder, how):
  features, labels = folder / "train.features.npy", folder / "train.labels.npy"
  if how == "random_4kb":
    data = bytearray(features.read_bytes())
    data[-4096:] = np.random.default_rng(0).bytes(4096)
    features.write_bytes(bytes(data))
  elif how == "all_nan":
    shape = np.load(features).shape
    np.save(features, np.full(shape, np.nan, np.float32))
  elif how == "validation_copied_over_train":
    features.write_bytes((folder / "validation.features.npy").read_bytes())
    labels.write_bytes((folder / "validation.labels.npy").read_bytes())
  elif how == "truncated":
    features.write_bytes(features.read_bytes()[:200])
  elif how == "garbage_header":
    features.write_bytes(b"\x93NUMPY garbage" + features.read_bytes()[15:])
  elif how == "truncated_labels":
    labels.write_bytes(labels.read_bytes()[:20])
  elif how == "no_metadata":
    (folder / "train.meta.json").unlink()


@pytest.mark.parametrize("how", ["random_4kb", "all_nan", "validation_copied_over_train",
                                 "truncated", "garbage_header", "truncated_labels",
                                 "no_metadata"])
def test_damaged_cached_features_are_extracted_again_never_trained_on(saved_splits, how,
                                                                       capsys):
  folder, saved, extract = saved_splits
  _damage(folder, how)
  capsys.readouterr()
  again = extract("train")
  line = capsys.readouterr().out
  assert line.startswith("info: cached features of train in ") and "extracting them again" in line
  np.testing.assert_array_equal(np.asarray(again.features), saved["train"])
  extract("train")  # and the new files check out: no second extraction
  assert capsys.readouterr().out == ""


def test_features_of_other_settings_are_not_used(saved_splits, capsys):
  _, saved, extract = saved_splits
  capsys.readouterr()
  np.testing.assert_array_equal(np.asarray(extract("validation", settings="run-b").features),
                                saved["validation"])
  assert "made with other settings" in capsys.readouterr().out


def test_another_split_s_files_copied_over_are_not_trained_on(saved_splits, capsys):
  folder, saved, extract = saved_splits
  extract("validation"), extract("train")  # both of this run's settings (as other tests left)
  capsys.readouterr()
  for suffix in ("features.npy", "labels.npy", "meta.json"):  # validation's, named as train's
    (folder / f"train.{suffix}").write_bytes((folder / f"validation.{suffix}").read_bytes())
  again = extract("train")
  assert "of the validation split's records, not these train records" in capsys.readouterr().out
  np.testing.assert_array_equal(np.array(again.features), saved["train"])
  assert json.loads((folder / "train.meta.json").read_text())["split"] == "train"


def test_a_file_where_the_feature_folder_belongs_is_one_line(data_dir, tmp_path):
  builder = dataset_lib.builder("animals10_tfds/160px", str(data_dir))
  inputs = keras.Input((16, 16, 3))
  extractor = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
  (tmp_path / "fine_tune").write_text("a user's file")
  with pytest.raises(ValueError, match="is a file where the cached activations belong"):
    feature_cache.extract(extractor, records_lib.records(builder, "validation"),
                          folder=str(tmp_path / "fine_tune"), split="validation",
                          batch_size=8, image_size=16, resize="crop")
  assert (tmp_path / "fine_tune").read_text() == "a user's file"
