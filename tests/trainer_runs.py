"""Helpers of the trainer's tests: a small config, and the command line run as a user runs it."""

import os
import subprocess
import sys

from trainers import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main_command(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", "trainers.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)


def small_config(data_dir, model_dir, **overrides):
  """A tiny cnn2 config; its precision is pinned (float32 unless overridden), so no
  figure depends on what --precision=auto picks on the machine the test lands on."""
  settings = dict(model="cnn2", model_dir=str(model_dir), data_dir=str(data_dir),
                  image_size=48, batch_size=16, epochs=2, seed=1, deterministic=True,
                  weights="none", precision="float32")
  settings.update(overrides)
  return config_lib.Config(**settings)


# Wall-clock fields of metrics.json: the only ones that differ between two
# identical deterministic runs.
CLOCK_KEYS = ("train_seconds", "phases")


def without_clock(metrics: dict) -> dict:
  """metrics.json without its wall-clock fields (to compare two runs)."""
  return {key: value for key, value in metrics.items() if key not in CLOCK_KEYS}


def train_variants(root, data_dir, settings: dict, variants: dict) -> dict:
  """{name: (run folder, metrics)}: one run of `settings` per variant's overrides."""
  from trainers import config as config_lib  # pylint: disable=g-import-not-at-top
  from trainers.training import train  # pylint: disable=g-import-not-at-top
  done = {}
  for name, overrides in variants.items():
    folder = root / name
    done[name] = (folder, train.train_and_evaluate(config_lib.Config(
        model_dir=str(folder), data_dir=str(data_dir), **{**settings, **overrides})))
  return done
