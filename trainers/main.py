r"""Trains one model of the study on the animals10_tfds dataset.

    python -m trainers.main --model=dn121 --fine_tune \
        [--data_dir=work/tensorflow_datasets] [--model_dir=work/runs/dn121]

--data_dir defaults to TFDS's (TFDS_DATA_DIR or ~/tensorflow_datasets), where a
bare `tfds build animals10_tfds` writes; --model_dir to a new timestamped folder
under work/runs/, printed on the first line with the command that resumes it.

Every flag lives here; they become one frozen `Config` for `train_and_evaluate`.
The run folder gets `flags.txt`, which reruns (or resumes) it with `--flagfile`.
"""

import os
import signal
import sys
import time

# TensorFlow's C++ start-up chatter would bury a one-line error; users can
# still ask for it with TF_CPP_MIN_LOG_LEVEL=0.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from trainers import config as config_lib
from trainers import devices
from trainers import entry_point
from trainers import models
from trainers import run_folder
from trainers import run_paths
from trainers import train

_MODEL = flags.DEFINE_enum("model", None, list(models.REGISTRY), "Model to train.")
_DATASET = flags.DEFINE_string("dataset", "animals10_tfds/160px", "TFDS name/config.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir (default ~/tensorflow_datasets).")
_MODEL_DIR = flags.DEFINE_string(
    "model_dir", None, "Run folder (created; resumed if present). Default: a new "
    "work/runs/<model>-<date>-<time> under the current directory.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 100, "Input side in pixels.")
_RESIZE = flags.DEFINE_enum("resize", "crop", config_lib.RESIZE_MODES,
                            "crop: shorter side to size, centre crop; stretch: squeeze.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 24, "Global batch size.")
_EPOCHS = flags.DEFINE_integer("epochs", 10, "Epochs of the first (frozen) phase.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
_PATIENCE = flags.DEFINE_integer("early_stopping_patience", 0,
                                 "Stop after this many epochs without val_loss gain; 0: off.")
_AUGMENT = flags.DEFINE_bool("augment", False, "Flips, rotations, zoom, contrast in the model.")
_BALANCE = flags.DEFINE_enum("balance", "none", config_lib.BALANCE_MODES,
                             "undersample: cut every class to the smallest (every split); "
                             "class_weight: weight the loss.")
_KEEP_FORMATS = flags.DEFINE_list("keep_formats", [], "Keep only these original formats (JPEG).")
_KEEP_MODES = flags.DEFINE_list("keep_modes", [], "Keep only these original modes (RGB).")
_KEEP_ORIENTATIONS = flags.DEFINE_list("keep_orientations", [],
                                       "Keep only landscape/portrait/squared.")
_FINE_TUNE = flags.DEFINE_bool("fine_tune", False, "Second phase: unfreeze the backbone top.")
_FINE_TUNE_EPOCHS = flags.DEFINE_integer("fine_tune_epochs", 5, "Epochs of fine-tuning.")
_FINE_TUNE_LEARNING_RATE = flags.DEFINE_float("fine_tune_learning_rate", 1e-5,
                                              "Learning rate of fine-tuning.")
_FINE_TUNE_LAYERS = flags.DEFINE_integer("fine_tune_layers", 30,
                                         "Top backbone layers to unfreeze (BatchNorm stays frozen).")
_HEAD_UNITS = flags.DEFINE_list("head_units", ["128"], "Dense layers before the output.")
_WEIGHTS = flags.DEFINE_string("weights", "imagenet",
                               "Backbone weights: imagenet, none, or a weights file.")
_PRECISION = flags.DEFINE_enum("precision", "auto", config_lib.PRECISIONS,
                               "auto: fp16 on tensor-core GPUs, bf16 on TPU/bf16 CPUs.")
_STRATEGY = flags.DEFINE_enum("strategy", "auto", config_lib.STRATEGIES,
                              "tf.distribute strategy; auto mirrors over several GPUs.")
_TPU = flags.DEFINE_string("tpu", "", "TPU name or address, with --strategy=tpu.")
_SEED = flags.DEFINE_integer("seed", 0, "Seeds Python, NumPy, TensorFlow, shuffling.")
_DETERMINISTIC = flags.DEFINE_bool("deterministic", False,
                                   "Op determinism and ordered tf.data: identical reruns.")
_CACHE = flags.DEFINE_bool("cache", False, "Keep decoded images in memory after epoch 1.")
_CACHE_FEATURES = flags.DEFINE_bool(
    "cache_features", True, "Frozen phase of a transfer model without --augment: run the "
    "backbone once per split and train the head on its cached features.")
_STEPS_PER_EPOCH = flags.DEFINE_integer("steps_per_epoch", 0, "Cap batches per epoch; 0: all.")
_VIRTUAL_DEVICES = flags.DEFINE_integer("virtual_devices", 0,
                                        "Split the CPU into N devices (testing mirrored).")
_CLUSTER_TIMEOUT = flags.DEFINE_float("cluster_timeout", 300,
                                      "multi_worker: seconds to wait for every TF_CONFIG task.")
_OVERRIDES = flags.DEFINE_multi_string(
    "override", [], "Recorded in config.json only: a flag tools.reproduce put after an "
    "experiment's flagfile (it sets nothing itself).")
_ALLOW_EMPTY_CLASSES = flags.DEFINE_bool(
    "allow_empty_classes", False, "Train although a class has no image in the train split "
    "(refused otherwise: a 10-way model that never saw a class is rarely meant).")

flags.mark_flags_as_required(["model"])


def _config() -> config_lib.Config:
  try:
    head_units = tuple(int(units) for units in _HEAD_UNITS.value)
  except ValueError:
    raise ValueError(f"--head_units takes integers, got {','.join(_HEAD_UNITS.value)}.") from None
  return config_lib.Config(
      model=_MODEL.value, model_dir=_MODEL_DIR.value, dataset=_DATASET.value,
      data_dir=_DATA_DIR.value, image_size=_IMAGE_SIZE.value, resize=_RESIZE.value,
      batch_size=_BATCH_SIZE.value, epochs=_EPOCHS.value,
      learning_rate=_LEARNING_RATE.value, early_stopping_patience=_PATIENCE.value,
      augment=_AUGMENT.value, balance=_BALANCE.value,
      keep_formats=tuple(_KEEP_FORMATS.value), keep_modes=tuple(_KEEP_MODES.value),
      keep_orientations=tuple(_KEEP_ORIENTATIONS.value), fine_tune=_FINE_TUNE.value,
      fine_tune_epochs=_FINE_TUNE_EPOCHS.value,
      fine_tune_learning_rate=_FINE_TUNE_LEARNING_RATE.value,
      fine_tune_layers=_FINE_TUNE_LAYERS.value, head_units=head_units,
      weights=_WEIGHTS.value, precision=_PRECISION.value, strategy=_STRATEGY.value,
      tpu=_TPU.value, seed=_SEED.value, deterministic=_DETERMINISTIC.value,
      cache=_CACHE.value, cache_features=_CACHE_FEATURES.value,
      steps_per_epoch=_STEPS_PER_EPOCH.value,
      virtual_devices=_VIRTUAL_DEVICES.value, cluster_timeout=_CLUSTER_TIMEOUT.value,
      allow_empty_classes=_ALLOW_EMPTY_CLASSES.value, overrides=tuple(_OVERRIDES.value))


def _flagfile() -> str:
  """The text of flags.txt: `--flagfile=RUN/flags.txt` reruns (or resumes) the run."""
  holders = [value for value in globals().values() if isinstance(value, flags.FlagHolder)]
  lines = [flags.FLAGS[holder.name].serialize() for holder in holders
           if holder.value is not None]
  return "\n".join(sorted(lines)) + "\n"


def _new_run_folder(model: str) -> str:
  """work/runs/<model>-<YYYYmmdd-HHMMSS>, never an existing folder."""
  base = os.path.join("work", "runs", f"{model}-{time.strftime('%Y%m%d-%H%M%S')}")
  path, copy = base, 1
  while os.path.exists(path):
    copy += 1
    path = f"{base}-{copy}"
  return path


def main(argv):
  entry_point.no_arguments(argv)
  entry_point.quiet_logs()
  if _MODEL_DIR.value is None:
    if _STRATEGY.value == "multi_worker":
      sys.exit("error: --strategy=multi_worker needs --model_dir: one folder that every worker "
               "shares (NFS, GCS).")
    flags.FLAGS.model_dir = _new_run_folder(_MODEL.value)  # so flags.txt names it
  resume = (f"python -m trainers.main "
            f"--flagfile={run_paths.RunPaths(_MODEL_DIR.value).flags}")
  print(f"run folder: {_MODEL_DIR.value} (resume or rerun: {resume})", flush=True)
  _say_when_stopped_by_a_signal(resume)
  try:
    config = _config()
    train.train_and_evaluate(config, flagfile=_flagfile())  # only the chief writes it
  except (ValueError, devices.PeerLostError) as error:  # one line, no traceback
    sys.exit(f"error: {error}")
  except (MemoryError, tf.errors.ResourceExhaustedError):
    sys.exit(f"error: out of memory with --image_size={_IMAGE_SIZE.value} and "
             f"--batch_size={_BATCH_SIZE.value}: lower them (or --cache), then run the same "
             "command again; it resumes from the last finished epoch.")
  except Exception as error:  # pylint: disable=broad-except
    if run_folder.is_disk_full(error):  # a write of TensorFlow's or a library's own
      sys.exit(f"error: {run_folder.NoSpaceLeft(_MODEL_DIR.value)}")
    raise


def _say_when_stopped_by_a_signal(resume: str):
  """SIGTERM (a scheduler, `kill`) prints one line, then ends the process exactly as
  the default action would (exit status 143, nothing else run): the backup of
  the last finished epoch is what the resume starts from."""

  def stop(signal_number, frame):
    del frame
    print(f"stopped by {signal.Signals(signal_number).name}: resume with {resume}",
          file=sys.stderr, flush=True)
    signal.signal(signal_number, signal.SIG_DFL)
    os.kill(os.getpid(), signal_number)

  signal.signal(signal.SIGTERM, stop)


if __name__ == "__main__":
  app.run(main)
