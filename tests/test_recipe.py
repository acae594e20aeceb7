"""The modern recipe: schedule, AdamW, label smoothing, MixUp/CutMix, EMA, TTA, resume."""

import csv
import hashlib
import json
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainers import config as config_lib
from trainers.runs import settings as settings_lib
from trainers.data import input_pipeline
from trainers.training import recipe as recipe_lib
from trainers.training import train
import trainer_runs

MODERN = dict(label_smoothing=0.1, optimizer="adamw", weight_decay=0.05, schedule="cosine",
              warmup_epochs=1, augment="randaugment", mixup=0.2, cutmix=1.0, ema=True,
              tta=True, epochs=3)


def test_cosine_schedule_warms_up_then_reaches_zero_at_the_phases_end():
  config = config_lib.Config(model="cnn2", model_dir="unused", schedule="cosine",
                             warmup_epochs=1, epochs=4)
  schedule = recipe_lib.learning_rate(recipe_lib.of_phase(config, 0.01, 4, 10))
  rates = [float(schedule(step)) for step in (0, 5, 10, 25, 40)]
  assert rates[0] == 0 and rates[1] == pytest.approx(0.005) and rates[2] == pytest.approx(0.01)
  assert rates[3] == pytest.approx(0.005, abs=1e-6) and rates[4] == pytest.approx(0, abs=1e-9)
  assert recipe_lib.learning_rate(recipe_lib.Recipe(0.01)) == 0.01  # the study's: constant


def test_adamw_decays_kernels_but_not_biases():
  model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
  recipe_lib.compile_for_training(model, recipe_lib.Recipe(0.1, optimizer="adamw",
                                                            weight_decay=0.5))
  kernel, bias = (variable.numpy().copy() for variable in model.trainable_variables)
  model.optimizer.apply([tf.zeros_like(variable) for variable in model.trainable_variables],
                        model.trainable_variables)
  # A zero gradient moves only what weight decay moves: kernel *= 1 - lr * decay.
  np.testing.assert_allclose(model.trainable_variables[0].numpy(), kernel * (1 - 0.1 * 0.5),
                             rtol=1e-6)
  np.testing.assert_array_equal(model.trainable_variables[1].numpy(), bias)


def test_soft_crossentropy_takes_indices_or_distributions_with_smoothing():
  predictions = tf.constant([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
  loss = recipe_lib.SoftCrossentropy(label_smoothing=0.1)
  expected = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)(
      tf.one_hot([0, 2], 3), predictions)
  assert float(loss(tf.constant([0, 2]), predictions)) == pytest.approx(float(expected))
  assert float(loss(tf.one_hot([0, 2], 3), predictions)) == pytest.approx(float(expected))


def _mixed_labels(first_epoch: int, **mixing):
  images = tf.data.Dataset.range(48).map(
      lambda index: (tf.fill([8, 8, 3], tf.cast(index, tf.uint8)), index % 3))
  stream = input_pipeline.TrainingStream(batch_size=8, steps_per_epoch=3, epochs=4,
                                         first_epoch=first_epoch, seed=5, deterministic=True,
                                         num_classes=3, **mixing)
  return [labels.numpy() for _, labels in input_pipeline._training(images, stream,
                                                                    decode=False)]


@pytest.mark.parametrize("mixing", [dict(mixup=0.4), dict(cutmix=1.0),
                                    dict(mixup=0.4, cutmix=1.0)])
def test_mixed_batches_are_distributions_and_resume_exactly(mixing):
  uninterrupted = _mixed_labels(0, **mixing)
  assert len(uninterrupted) == 12 and uninterrupted[0].shape == (8, 3)
  for labels in uninterrupted:
    np.testing.assert_allclose(labels.sum(axis=1), 1, rtol=1e-6)
  assert any(((labels > 0.01) & (labels < 0.99)).any() for labels in uninterrupted), "mixed"
  resumed = _mixed_labels(2, **mixing)  # a run resumed after epoch 2 of 4
  for got, expected in zip(resumed, uninterrupted[6:], strict=True):
    np.testing.assert_array_equal(got, expected)


@pytest.fixture(scope="module")
def modern_run(data_dir, tmp_path_factory):
  """A cnn2 run with every flag of the modern recipe, and its metrics."""
  config = trainer_runs.small_config(data_dir, tmp_path_factory.mktemp("modern") / "run",
                                     **MODERN)
  return config, train.train_and_evaluate(config)


def test_tta_keeps_both_figures_and_predictions_say_which(modern_run):
  config, metrics = modern_run
  assert metrics["evaluation"] == "tta"
  assert set(metrics["plain"]) == {"accuracy_test", "precision_test", "recall_test",
                                   "f1-score_test"}
  with open(f"{config.model_dir}/predictions.csv", newline="") as file:
    rows = list(csv.DictReader(file))
  assert len(rows) == metrics["test_images"] and {row["evaluation"] for row in rows} == {"tta"}
  accuracy = np.mean([row["label"] == row["prediction"] for row in rows])
  assert accuracy == pytest.approx(metrics["accuracy_test"])


def test_ema_model_keras_holds_the_optimizers_averages_not_the_raw_weights(modern_run):
  config, _ = modern_run
  saved = keras.models.load_model(f"{config.model_dir}/model.keras")
  # The last epoch's backup holds the raw weights and the optimizer's averages.
  model = train.build(config, None)
  recipe_lib.compile_for_training(model, recipe_lib.of_phase(config, 1e-3, 3, 1))
  model.optimizer.build(model.trainable_variables)
  model.load_weights(f"{config.model_dir}/backup/train/latest.weights.h5")
  moving_averages = model.optimizer._model_variables_moving_average  # pylint: disable=W0212
  averages = [variable.numpy() for variable in moving_averages]
  raw = [variable.numpy() for variable in model.trainable_variables]
  saved_weights = [variable.numpy() for variable in saved.trainable_variables]
  for average, saved_weight in zip(averages, saved_weights, strict=True):
    np.testing.assert_array_equal(saved_weight, average)
  assert any(not np.array_equal(r, a) for r, a in zip(raw, averages)), "EMA changed nothing"


@pytest.mark.slow  # one more epoch of training: about 20 s (CI runs it)
def test_resume_with_every_new_flag_equals_the_uninterrupted_run(modern_run, tmp_path):
  config, uninterrupted = modern_run
  run = tmp_path / "resumed"
  shutil.copytree(config.model_dir, run)
  for name in ("metrics.json", "model.keras", "backup/train.done.weights.h5",
               "backup/train/latest.weights.h5", "backup/train/training_metadata.json"):
    (run / name).unlink()  # killed while saving epoch 3: the backup of epoch 2 remains
  config_path = run / "config.json"
  config_path.write_text(json.dumps({**json.loads(config_path.read_text()),
                                     "model_dir": str(run)}))
  resumed = train.train_and_evaluate(settings_lib.load(str(run)))
  assert trainer_runs.without_clock(resumed) == trainer_runs.without_clock(uninterrupted)
  assert len((run / "history.csv").read_text().splitlines()) == 4  # epoch 3 ran again


def test_cosine_run_refuses_to_resume_with_other_epochs(modern_run):
  config, _ = modern_run
  with pytest.raises(ValueError, match="--epochs=3 before, 4 now"):
    settings_lib.check_resumable(config_lib.Config(**{**config.__dict__, "epochs": 4}))


@pytest.mark.slow  # two more runs of every new flag (CI runs it)
def test_every_new_flag_gives_identical_reruns_under_deterministic(data_dir, tmp_path,
                                                                    modern_run):
  _, first = modern_run
  again = train.train_and_evaluate(trainer_runs.small_config(data_dir, tmp_path / "again",
                                                             **MODERN))
  assert trainer_runs.without_clock(again) == trainer_runs.without_clock(first)


@pytest.mark.parametrize("overrides,message", [
    (dict(weight_decay=0.05), "needs --optimizer=adamw"),
    (dict(optimizer="adamw"), "needs --weight_decay above 0"),
    (dict(warmup_epochs=1), "needs --schedule=cosine"),
    (dict(schedule="cosine", warmup_epochs=2, epochs=2), "leaves no epoch of --epochs=2"),
    (dict(label_smoothing=1.0), r"--label_smoothing must be in \[0, 1\)"),
    (dict(mixup=float("nan")), "--mixup must be"),
    (dict(ema_momentum=0.9), "--ema_momentum needs --ema"),
    (dict(augment="autoaugment"), "--augment=autoaugment is not one of none, study"),
])
def test_bad_recipe_flags_are_one_line(overrides, message):
  with pytest.raises(ValueError, match=message):
    config_lib.Config(model="cnn2", model_dir="unused", **overrides)


def test_old_config_json_with_a_bool_augment_loads_and_keeps_its_settings_hash(tmp_path):
  config = config_lib.Config(model="cnn2", model_dir=str(tmp_path), augment="study")
  settings_lib.save(config)
  values = json.loads((tmp_path / "config.json").read_text())
  for name in ("label_smoothing", "optimizer", "weight_decay", "schedule", "warmup_epochs",
               "mixup", "cutmix", "ema", "ema_momentum", "tta"):
    del values[name]  # as an older version wrote it
  (tmp_path / "config.json").write_text(json.dumps(dict(values, augment=True)))
  assert settings_lib.load(str(tmp_path)) == config
  # The hash an older version recorded: its fields, augment a bool.
  old = {name: value for name, value in values.items()
         if name not in settings_lib.RESUMABLE_CHANGES and name not in (
             "exclude", "exclude_sha256", "exclude_test")}
  old["augment"] = True
  assert settings_lib.settings_sha256(config) == hashlib.sha256(
      json.dumps(old, sort_keys=True).encode()).hexdigest()


@pytest.mark.slow  # two replicas, every new flag, in a fresh process: about 60 s (CI runs it)
def test_every_new_flag_trains_and_evaluates_exactly_under_mirrored(data_dir, tmp_path):
  run = tmp_path / "mirrored"
  done = trainer_runs.main_command(  # its own process: virtual devices are set at start-up
      "--model=cnn2", f"--data_dir={data_dir}", "--image_size=48", "--batch_size=16",
      "--strategy=mirrored", "--virtual_devices=2", "--deterministic", "--weights=none",
      f"--model_dir={run}", "--epochs=3", "--label_smoothing=0.1", "--optimizer=adamw",
      "--weight_decay=0.05", "--schedule=cosine", "--warmup_epochs=1",
      "--augment=randaugment", "--mixup=0.2", "--cutmix=1.0", "--ema", "--tta")
  assert done.returncode == 0, done.stderr[-2000:]
  assert "2 replica(s)" in done.stdout
  metrics = json.loads((run / "metrics.json").read_text())
  assert metrics["evaluation"] == "tta" and np.isfinite(metrics["loss_train"])
  assert sum(map(sum, metrics["confusion_matrix"])) == metrics["test_images"]
