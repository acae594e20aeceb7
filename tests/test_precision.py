"""Every training feature under float32, mixed_bfloat16 and mixed_float16.

All three policies run on any CPU (the mixed ones slowly, which is fine at 32 px
and a few steps), so the matrix runs on every machine, whatever `auto` would
pick there. The cheap cases run every day; the rest are slow (CI runs them).
"""

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from trainers import config as config_lib
from trainers.data import input_pipeline
from trainers.evaluation import metrics as metrics_lib
from trainers.training import train
import trainer_runs

POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
MIXED = POLICIES[1:]
# Every flag of the modern recipe at once.
EVERY_FLAG = dict(label_smoothing=0.1, optimizer="adamw", weight_decay=0.05, schedule="cosine",
                  warmup_epochs=1, augment="randaugment", mixup=0.2, cutmix=1.0, ema=True,
                  tta=True)
# One flag at a time (with what it needs).
EACH_FLAG = {
    "mixup": dict(mixup=0.2), "cutmix": dict(cutmix=1.0),
    "mixup_and_cutmix": dict(mixup=0.2, cutmix=1.0), "randaugment": dict(augment="randaugment"),
    "ema": dict(ema=True), "tta": dict(tta=True), "label_smoothing": dict(label_smoothing=0.1),
    "adamw": dict(optimizer="adamw", weight_decay=0.05),
    "cosine": dict(schedule="cosine", warmup_epochs=1)}
TINY = dict(image_size=32, batch_size=16, epochs=2, steps_per_epoch=2)


def _run(data_dir, folder, policy, **overrides) -> dict:
  return train.train_and_evaluate(trainer_runs.small_config(
      data_dir, folder, precision=policy, **{**TINY, **overrides}))


def _trained(metrics: dict, policy: str):
  assert metrics["precision"] == policy
  for column in metrics_lib.STUDY_COLUMNS:
    assert np.isfinite(metrics[column]), (column, metrics[column])


def _mixed_batches(policy: str, **mixing):
  keras.mixed_precision.set_global_policy(policy)
  images = tf.data.Dataset.range(32).map(
      lambda index: (tf.fill([8, 8, 3], tf.cast(index * 7, tf.uint8)), index % 3))
  stream = input_pipeline.TrainingStream(batch_size=8, steps_per_epoch=2, epochs=2, seed=3,
                                         deterministic=True, num_classes=3, **mixing)
  return [(image.numpy(), label.numpy())
          for image, label in input_pipeline._training(images, stream, decode=False)]


@pytest.mark.parametrize("mixing", [dict(mixup=0.4), dict(cutmix=1.0),
                                    dict(mixup=0.4, cutmix=1.0)])
def test_mixup_and_cutmix_mix_in_float32_identically_under_every_policy(mixing):
  expected = _mixed_batches("float32", **mixing)
  for policy in MIXED:
    got = _mixed_batches(policy, **mixing)
    for (image, label), (expected_image, expected_label) in zip(got, expected, strict=True):
      assert image.dtype == np.float32 and label.dtype == np.float32
      np.testing.assert_array_equal(image, expected_image)
      np.testing.assert_array_equal(label, expected_label)


@pytest.mark.parametrize("policy", POLICIES)
def test_every_recipe_flag_at_once_trains_and_evaluates_under(policy, data_dir, tmp_path):
  metrics = _run(data_dir, tmp_path / "run", policy, **EVERY_FLAG)
  _trained(metrics, policy)
  assert metrics["evaluation"] == "tta"


@pytest.mark.slow  # 27 short runs: about 3 minutes (CI runs it)
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("flag", sorted(EACH_FLAG))
def test_each_recipe_flag_trains_and_evaluates_under(flag, policy, data_dir, tmp_path):
  _trained(_run(data_dir, tmp_path / "run", policy, **EACH_FLAG[flag]), policy)


# --- The caches against the plain path, under each mixed policy (float32: their own
# tests). mnv2_035 at 32 px is the cheapest backbone that has both caches.
TRANSFER = dict(model="mnv2_035", image_size=32, batch_size=16, epochs=2, learning_rate=0.01,
                seed=4, deterministic=True, weights="none")


@pytest.mark.slow  # two transfer runs per policy: about a minute each (CI runs it)
@pytest.mark.parametrize("policy", MIXED)
@pytest.mark.parametrize("fine_tune", [False, True], ids=["frozen", "fine_tune"])
def test_cached_and_plain_paths_train_alike_under(fine_tune, policy, data_dir, tmp_path):
  runs = {}
  for cached in (True, False):
    folder = tmp_path / ("cached" if cached else "plain")
    settings = dict(TRANSFER, epochs=1, fine_tune=True, fine_tune_epochs=2,
                    fine_tune_learning_rate=0.01) if fine_tune else TRANSFER
    runs[cached] = (folder, train.train_and_evaluate(config_lib.Config(
        model_dir=str(folder), data_dir=str(data_dir), cache_features=cached,
        precision=policy, **settings)))
  (cached_folder, cached), (plain_folder, plain) = runs[True], runs[False]
  phase = "fine_tune" if fine_tune else "train"
  assert cached["phases"][phase]["cached_features"] and not plain["phases"][phase][
      "cached_features"]
  _trained(cached, policy)
  # The cache holds the backbone's outputs as computed under the policy, so the layers
  # above see the same numbers on both paths.
  assert ((cached_folder / "history.csv").read_text()
          == (plain_folder / "history.csv").read_text())
  assert trainer_runs.without_clock(cached) == trainer_runs.without_clock(plain)


# --- kill -9 and resume, in fresh processes, with every recipe flag.
def _command(data_dir, run, policy):
  flags = {**TINY, **EVERY_FLAG, "epochs": 3}
  return [sys.executable, "-m", "trainers.main", "--model=cnn2", f"--data_dir={data_dir}",
          f"--model_dir={run}", f"--precision={policy}", "--deterministic", "--weights=none",
          "--seed=1"] + [f"--{key}" if value is True else f"--{key}={value}"
                         for key, value in flags.items()]


def _optimizer_state(weights_file) -> dict:
  """Every scalar of the optimizer in a backup: step counts, rates, and under loss
  scaling its dynamic scale and the steps since it last changed."""
  state = {}
  with h5py.File(weights_file) as file:
    file.visititems(lambda name, item: state.update({name: item[()]}) if (
        name.startswith("optimizer") and isinstance(item, h5py.Dataset)
        and item.shape == ()) else None)
  return state


@pytest.mark.slow  # three fresh processes per policy: about 90 s each (CI runs it)
@pytest.mark.parametrize("policy", POLICIES)
def test_killed_and_resumed_equals_the_uninterrupted_run_under(policy, data_dir, tmp_path):
  runs = {}
  for name in ("uninterrupted", "killed"):
    run = tmp_path / name
    process = subprocess.Popen(_command(data_dir, run, policy), cwd=trainer_runs.REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if name == "killed":  # once the first epoch's backup is complete
      metadata = run / "backup" / "train" / "training_metadata.json"
      deadline = time.time() + 300
      while time.time() < deadline and process.poll() is None and not metadata.exists():
        time.sleep(0.01)
      os.kill(process.pid, signal.SIGKILL)
      process.wait()
      assert metadata.exists() and not (run / "metrics.json").exists()
      process = subprocess.Popen(_command(data_dir, run, policy), cwd=trainer_runs.REPO,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, errors = process.communicate(timeout=300)
    assert process.returncode == 0, errors[-2000:]
    runs[name] = run
  metrics = {name: json.loads((run / "metrics.json").read_text()) for name, run in runs.items()}
  _trained(metrics["killed"], policy)
  assert (trainer_runs.without_clock(metrics["killed"])
          == trainer_runs.without_clock(metrics["uninterrupted"]))
  states = {name: _optimizer_state(run / "backup" / "train" / "latest.weights.h5")
            for name, run in runs.items()}
  assert states["killed"] == states["uninterrupted"]
  if policy == "mixed_float16":  # the loss scale is part of the state that survives
    assert 32768.0 in states["killed"].values(), states["killed"]


@pytest.mark.slow  # one process of two replicas per policy: about a minute (CI runs it)
@pytest.mark.parametrize("policy", POLICIES)
def test_every_recipe_flag_trains_exactly_under_mirrored_under(policy, data_dir, tmp_path):
  run = tmp_path / "mirrored"
  done = trainer_runs.main_command(
      *_command(data_dir, run, policy)[3:], "--strategy=mirrored", "--virtual_devices=2")
  assert done.returncode == 0, done.stderr[-2000:]
  assert "2 replica(s)" in done.stdout and f"({policy}," in done.stdout
  metrics = json.loads((run / "metrics.json").read_text())
  _trained(metrics, policy)
  assert sum(map(sum, metrics["confusion_matrix"])) == metrics["test_images"]


@pytest.mark.slow  # a run, two exports and a sweep per policy: about 40 s each (CI runs it)
@pytest.mark.parametrize("policy", POLICIES)
def test_predict_export_and_lr_find_under(policy, data_dir, tmp_path, images):
  from tools import lr_find  # pylint: disable=g-import-not-at-top
  from trainers.serving import export  # pylint: disable=g-import-not-at-top
  from trainers.serving import predict  # pylint: disable=g-import-not-at-top
  config = trainer_runs.small_config(data_dir, tmp_path / "run", precision=policy,
                                     **{**TINY, "image_size": 40})
  metrics = train.train_and_evaluate(config)
  _trained(metrics, policy)
  # predict reads model.keras, which keeps the policy it was trained under: the run's own
  # predictions, image for image.
  files = [str(images / "dog.jpg"), str(images / "rgba.png")]
  by_run, errors = predict.predict(config.model_dir, files, top_k=10)
  assert errors == [] and len(by_run) == 2
  # Exports start from a float32 copy; each passes its own checks against that copy.
  for export_format in ("saved_model", "tflite"):
    report = export.export(config.model_dir, export_format,
                           str(tmp_path / f"model.{export_format}"), latency_runs=0)
    assert report["max_probability_difference"] <= 1e-3 and report["top1_agreement"] == 1.0
  keras.mixed_precision.set_global_policy("float32")
  try:
    sweep = lr_find.run(config, str(tmp_path / "lr_find"), steps=12, start=1e-4, end=1.0)
    assert sweep["steps"] >= 2 and all(np.isfinite(sweep["losses"][:2]))
  except ValueError as error:  # 12 steps may show no fall: the sweep itself ran
    assert "never fell" in str(error) or "no rate could be found" in str(error), error
