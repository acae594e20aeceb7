"""Fine-tuning on cached activations at the cut: found from the graph, exact, resumable."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from trainers import config as config_lib
import trainer_runs
from trainers.modeling import models
from trainers.modeling import cutting
from trainers.training import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Deterministic float32, so the two paths can be compared bit for bit; random
# weights (nothing downloads); one frozen epoch, then three fine-tuning epochs.
SETTINGS = dict(image_size=32, batch_size=16, epochs=1, fine_tune=True, fine_tune_epochs=3,
                learning_rate=0.01, fine_tune_learning_rate=0.01, seed=4, deterministic=True,
                precision="float32", weights="none", early_stopping_patience=5)


@pytest.mark.parametrize("name,layers,cut", [
    ("mnv2_035", 30, ["block_13_project"]),
    ("mnv2_035", 8, ["block_16_expand_relu"]),
    # The top 30 layers of EfficientNetV2B3 start inside a residual block: its
    # expansion and its skip both cross the cut.
    ("enb3", 30, ["block6k_expand_activation", "block6j_add"]),
    ("dn121", 30, ["conv5_block12_concat"]),
])
def test_the_cut_is_found_from_the_graph_and_the_two_halves_are_the_model(name, layers, cut):
  model = models.build_model(name, 32, weights=None)
  models.unfreeze_top(model, layers)
  bottom, top = cutting.split_at_cut(model, layers)
  inner_bottom = bottom.layers[-1]
  assert [tensor._keras_history.operation.name  # pylint: disable=protected-access
          for tensor in inner_bottom.outputs] == cut
  batch = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
  np.testing.assert_array_equal(top(bottom(batch)).numpy(), model(batch).numpy())
  # The top trains exactly what fine-tuning trains, as the same variables.
  assert ({id(variable) for variable in top.trainable_variables}
          == {id(variable) for variable in model.trainable_variables})
  assert not bottom.trainable_variables


def test_a_cut_that_cannot_be_made_is_said():
  model = models.build_model("mnv2_035", 32, weights=None)
  backbone = models.backbone_of(model)
  with pytest.raises(cutting.CutError, match="nothing frozen"):
    cutting.split_at_cut(model, len(backbone.layers) - 1)
  with pytest.raises(cutting.CutError, match="leaves no frozen layer"):
    cutting.split_at_cut(model, len(backbone.layers))
  with pytest.raises(cutting.CutError, match="unfreezes no layer"):
    cutting.split_at_cut(model, 0)
  with pytest.raises(cutting.CutError, match="no backbone"):
    cutting.split_at_cut(models.build_model("cnn2", 32), 3)
  # A backbone whose top layer is called twice (shared weights): no single cut.
  images = keras.Input((8, 8, 3))
  shared = keras.layers.Conv2D(3, 1, name="shared")
  hidden = keras.layers.Conv2D(3, 1, name="frozen")(images)
  backbone = keras.Model(images, shared(shared(hidden)), name="backbone")
  outer = keras.Input((8, 8, 3))
  pooled = keras.layers.GlobalAveragePooling2D(name=models.POOL_LAYER)(backbone(outer))
  with pytest.raises(cutting.CutError, match="shared is called 2 times"):
    cutting.split_at_cut(keras.Model(outer, keras.layers.Dense(10)(pooled)), 1)


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
  """{model: {cached: (run folder, metrics)}}, trained as they are first asked for."""
  root, done = tmp_path_factory.mktemp("fine_tune_cache"), {}

  def run(name, cached):
    if (name, cached) not in done:
      folder = root / f"{name}-{'cached' if cached else 'plain'}"
      result = train.train_and_evaluate(config_lib.Config(
          model=name, model_dir=str(folder), data_dir=str(data_dir), cache_features=cached,
          **SETTINGS))
      done[name, cached] = (folder, result)
    return done[name, cached]
  return run


@pytest.mark.slow  # two fine-tuning runs per backbone: 1-3 min each (CI runs it)
@pytest.mark.parametrize("name", ["mnv2", "mnv2_035", "dn121", "enb3"])
def test_fine_tuning_on_cached_activations_equals_the_whole_model(runs, name):
  (cached_folder, cached), (plain_folder, plain) = runs(name, True), runs(name, False)
  assert cached["phases"]["fine_tune"]["cached_features"] is True
  assert plain["phases"]["fine_tune"]["cached_features"] is False
  history = (cached_folder / "history.csv").read_text()
  assert history == (plain_folder / "history.csv").read_text()
  losses = [line.split(",")[3] for line in history.splitlines()[2:]]
  assert len(set(losses)) == 3, "the fine-tuning epochs changed nothing"
  assert trainer_runs.without_clock(cached) == trainer_runs.without_clock(plain)
  assert not (cached_folder / "features").exists()  # the cache goes with the phase


def _command(data_dir, run):
  return [sys.executable, "-m", "trainers.main", "--model=mnv2_035", f"--data_dir={data_dir}",
          f"--model_dir={run}"] + [
              f"--{key}={value}" if not isinstance(value, bool) else f"--{key}"
              for key, value in SETTINGS.items()]


@pytest.mark.slow  # three fresh processes each: about 90 s (CI runs it)
@pytest.mark.parametrize("when", ["extracting", "training the top"])
def test_killed_while_fine_tuning_on_the_cache_the_same_command_resumes_exactly(
    runs, data_dir, tmp_path, when):
  run = tmp_path / "killed"
  signal_file = (run / "features" / "fine_tune" / "train.meta.json" if when == "extracting"
                 else run / "backup" / "fine_tune_cached" / "training_metadata.json")
  process = subprocess.Popen(_command(data_dir, run), cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None and not signal_file.exists():
    time.sleep(0.01)
  os.kill(process.pid, signal.SIGKILL)
  process.wait()
  assert signal_file.exists() and not (run / "metrics.json").exists()
  if when == "extracting":
    assert not (run / "backup" / "fine_tune_cached").exists(), "killed after the extraction"
  resumed = subprocess.run(_command(data_dir, run), cwd=REPO, capture_output=True, text=True,
                           timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  _, uninterrupted = runs("mnv2_035", True)
  assert (trainer_runs.without_clock(json.loads((run / "metrics.json").read_text()))
          == trainer_runs.without_clock(uninterrupted))


@pytest.mark.slow  # two fresh processes of two replicas: about 2 min (CI runs it)
def test_fine_tuning_on_cached_activations_under_mirrored_equals_the_plain_path(data_dir,
                                                                               tmp_path):
  metrics = {}
  for cached in (True, False):
    run = tmp_path / ("cached" if cached else "plain")
    done = subprocess.run(  # its own process: virtual devices are set at start-up
        _command(data_dir, run) + ["--strategy=mirrored", "--virtual_devices=2",
                                   "--batch_size=10",  # 5 per replica; padded last batches
                                   "--cache_features" if cached else "--nocache_features"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 replica(s)" in done.stdout
    metrics[cached] = json.loads((run / "metrics.json").read_text())
  assert metrics[True]["phases"]["fine_tune"]["cached_features"] is True
  assert trainer_runs.without_clock(metrics[True]) == trainer_runs.without_clock(metrics[False])
  assert sum(map(sum, metrics[True]["confusion_matrix"])) == metrics[True]["test_images"]


@pytest.mark.slow  # one short fine-tuning run: about 40 s (CI runs it)
def test_a_run_whose_backbone_cannot_be_cut_says_so_and_fine_tunes_end_to_end(data_dir,
                                                                               tmp_path):
  run = tmp_path / "uncut"
  done = subprocess.run(_command(data_dir, run) + ["--fine_tune_layers=1000",
                                                   "--fine_tune_epochs=1"],
                        cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  lines = [line for line in done.stdout.splitlines() if "activations not cached" in line]
  assert len(lines) == 1 and lines[0].startswith("info: fine_tune phase trains end to end")
  assert "--fine_tune_layers=1000 leaves no frozen layer" in lines[0]
  metrics = json.loads((run / "metrics.json").read_text())
  assert metrics["phases"]["train"]["cached_features"] is True
  assert metrics["phases"]["fine_tune"]["cached_features"] is False
