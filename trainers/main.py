r"""Trains one model of the study on the animals10_tfds dataset.

    python -m trainers.main --model=dn121 --fine_tune \
        [--data_dir=work/tensorflow_datasets] [--model_dir=work/runs/dn121]

--data_dir defaults to TFDS's (TFDS_DATA_DIR or ~/tensorflow_datasets), where a
bare `tfds build animals10_tfds` writes; --model_dir to a new timestamped folder
under work/runs/, printed on the first line with the command that resumes it.

Every flag lives here; they become one frozen `Config` for `train_and_evaluate`.
The run folder gets `flags.txt`, which reruns (or resumes) it with `--flagfile`.
"""

import dataclasses
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
from trainers.training import devices
from trainers import cli
from trainers.modeling import models
from trainers.runs import run_folder
from trainers.runs import run_paths
from trainers.training import train

_DEFAULT = {field.name: field.default for field in dataclasses.fields(config_lib.Config)}


def _listed(values: tuple) -> list[str]:
  """A tuple default as an absl list flag's default."""
  return [str(value) for value in values]


def define_flags():
  """Defines every flag of the trainer (called once, before parsing).

  A flag named as a `Config` field takes that field's default: the dataclass is
  the one place a default is written.
  """
  flags.DEFINE_enum("model", None, list(models.REGISTRY), "Model to train.")
  flags.DEFINE_string("dataset", _DEFAULT["dataset"], "TFDS name/config.")
  flags.DEFINE_string("data_dir", _DEFAULT["data_dir"],
                      "TFDS data_dir (default ~/tensorflow_datasets).")
  flags.DEFINE_string(
      "model_dir", None, "Run folder (created; resumed if present). Default: a new "
      "work/runs/<model>-<date>-<time> under the current directory.")
  flags.DEFINE_integer("image_size", _DEFAULT["image_size"], "Input side in pixels.")
  flags.DEFINE_enum("resize", _DEFAULT["resize"], config_lib.RESIZE_MODES,
                    "crop: shorter side to size, centre crop; stretch: squeeze.")
  flags.DEFINE_integer("batch_size", _DEFAULT["batch_size"], "Global batch size.")
  flags.DEFINE_integer("epochs", _DEFAULT["epochs"], "Epochs of the first (frozen) phase.")
  flags.DEFINE_float("learning_rate", _DEFAULT["learning_rate"], "Adam learning rate.")
  flags.DEFINE_integer("early_stopping_patience", _DEFAULT["early_stopping_patience"],
                       "Stop after this many epochs without val_loss gain; 0: off.")
  flags.DEFINE_flag(_AugmentFlag())
  flags.DEFINE_enum(
      "balance", _DEFAULT["balance"], config_lib.BALANCE_MODES,
      "undersample: cut every class to the smallest (every split); "
      "class_weight: weight the loss.")
  flags.DEFINE_list("keep_formats", _listed(_DEFAULT["keep_formats"]),
                    "Keep only these original formats (JPEG).")
  flags.DEFINE_list("keep_modes", _listed(_DEFAULT["keep_modes"]),
                    "Keep only these original modes (RGB).")
  flags.DEFINE_list("keep_orientations", _listed(_DEFAULT["keep_orientations"]),
                    "Keep only landscape/portrait/squared.")
  flags.DEFINE_string(
      "exclude", None, "Leave these records out of training and validation: "
      "a CSV with a file_name column (tools.audit's audit.csv, filtered) or "
      "a list of file names; the list and its SHA-256 go into the config.")
  flags.DEFINE_bool("exclude_test", _DEFAULT["exclude_test"],
                    "With --exclude: leave them out of the test split "
                    "too.")
  flags.DEFINE_bool("fine_tune", _DEFAULT["fine_tune"], "Second phase: unfreeze the backbone top.")
  flags.DEFINE_integer("fine_tune_epochs", _DEFAULT["fine_tune_epochs"], "Epochs of fine-tuning.")
  flags.DEFINE_float("fine_tune_learning_rate", _DEFAULT["fine_tune_learning_rate"],
                     "Learning rate of fine-tuning.")
  flags.DEFINE_integer("fine_tune_layers", _DEFAULT["fine_tune_layers"],
                       "Top backbone layers to unfreeze (BatchNorm stays frozen).")
  flags.DEFINE_list("head_units", _listed(_DEFAULT["head_units"]),
                    "Dense layers before the output.")
  flags.DEFINE_string("weights", _DEFAULT["weights"],
                      "Backbone weights: imagenet, none, or a weights file.")
  flags.DEFINE_enum("precision", _DEFAULT["precision"], config_lib.PRECISIONS,
                    "auto: fp16 on tensor-core GPUs, bf16 on TPU/bf16 CPUs.")
  flags.DEFINE_enum("strategy", _DEFAULT["strategy"], config_lib.STRATEGIES,
                    "tf.distribute strategy; auto mirrors over several GPUs.")
  flags.DEFINE_string("tpu", _DEFAULT["tpu"], "TPU name or address, with --strategy=tpu.")
  flags.DEFINE_integer("seed", _DEFAULT["seed"], "Seeds Python, NumPy, TensorFlow, shuffling.")
  flags.DEFINE_bool("deterministic", _DEFAULT["deterministic"],
                    "Op determinism and ordered tf.data: identical reruns.")
  flags.DEFINE_bool("cache", _DEFAULT["cache"], "Keep decoded images in memory after epoch 1.")
  flags.DEFINE_bool(
      "cache_features", _DEFAULT["cache_features"],
      "Transfer models without --augment: run the frozen backbone "
      "(when fine-tuning, its frozen bottom) once per split and train what sits above it "
      "on its cached activations.")
  flags.DEFINE_integer("steps_per_epoch", _DEFAULT["steps_per_epoch"],
                       "Cap batches per epoch; 0: all.")
  flags.DEFINE_integer("virtual_devices", _DEFAULT["virtual_devices"],
                       "Split the CPU into N devices (testing mirrored).")
  flags.DEFINE_float("cluster_timeout", _DEFAULT["cluster_timeout"],
                     "multi_worker: seconds to wait for every TF_CONFIG task.")
  flags.DEFINE_multi_string(
      "override", [], "Recorded in config.json only: a flag tools.reproduce put after an "
      "experiment's flagfile (it sets nothing itself).")
  flags.DEFINE_float(
      "label_smoothing", _DEFAULT["label_smoothing"],
      "Spread this much of each label's weight over "
      "every class (0.1 is timm's default).")
  flags.DEFINE_enum(
      "optimizer", _DEFAULT["optimizer"], config_lib.OPTIMIZERS,
      "adamw: Adam with decoupled --weight_decay (none on biases and "
      "normalization).")
  flags.DEFINE_float("weight_decay", _DEFAULT["weight_decay"],
                     "AdamW's decoupled weight decay (0.05 is common).")
  flags.DEFINE_enum(
      "schedule", _DEFAULT["schedule"], config_lib.SCHEDULES,
      "The learning rate over each phase: constant, or a linear warm-up of "
      "--warmup_epochs then a cosine decay to 0 at the phase's end.")
  flags.DEFINE_integer("warmup_epochs", _DEFAULT["warmup_epochs"],
                       "With --schedule=cosine: warm-up epochs of each "
                       "phase.")
  flags.DEFINE_float(
      "mixup", _DEFAULT["mixup"], "MixUp alpha (0.2 is common); 0: off. Mixes images and "
      "labels in the batch stream.")
  flags.DEFINE_float(
      "cutmix", _DEFAULT["cutmix"], "CutMix alpha (1.0 is common); 0: off. With --mixup, "
      "each batch takes one of the two.")
  flags.DEFINE_bool(
      "ema", _DEFAULT["ema"], "Keep an exponential moving average of the weights; "
      "evaluation and model.keras use it.")
  flags.DEFINE_float("ema_momentum", _DEFAULT["ema_momentum"],
                     "With --ema: the average's momentum per step.")
  flags.DEFINE_bool(
      "tta", _DEFAULT["tta"], "Evaluate each test image and its mirror image, averaged; "
      "metrics.json keeps the plain figures too.")
  flags.DEFINE_bool(
      "allow_empty_classes", _DEFAULT["allow_empty_classes"],
      "Train although a class has no image in the train split "
      "(refused otherwise: a 10-way model that never saw a class is rarely meant).")
  flags.mark_flags_as_required(["model"])


class _AugmentFlag(flags.Flag):
  """--augment=POLICY; the bare --augment is `study` (as the study's flagfiles say it),
  --noaugment is `none`."""

  def __init__(self):
    super().__init__(
        flags.EnumParser(config_lib.AUGMENT_POLICIES + ("true", "false")),
        flags.ArgumentSerializer(),
        "augment",
        _DEFAULT["augment"],
        "Augmentation inside the model, in training: none; study (flips, small rotations, "
        "zoom, contrast; the bare --augment); randaugment (Keras's RandAugment).",
        boolean=True)

  def _parse(self, argument):
    if isinstance(argument, bool):
      argument = str(argument).lower()
    value = super()._parse(argument)
    return {"true": "study", "false": "none"}.get(value, value)

  def _serialize(self, value):
    return "--noaugment" if value == "none" else f"--augment={value}"


def config_from_flags() -> config_lib.Config:
  """The parsed flags as one frozen `Config` (each field is the flag of its name;
  `overrides` is the repeated --override)."""
  values = {}
  for field in dataclasses.fields(config_lib.Config):
    if field.name in ("exclude", "exclude_sha256"):
      continue  # read from the --exclude file below
    value = flags.FLAGS["override" if field.name == "overrides" else field.name].value
    values[field.name] = tuple(value) if isinstance(value, list) else value
  try:
    values["head_units"] = tuple(int(units) for units in values["head_units"])
  except ValueError:
    raise ValueError(
        f"--head_units takes integers, got {','.join(values['head_units'])}.") from None
  if flags.FLAGS.exclude:
    values["exclude"], values["exclude_sha256"] = config_lib.read_exclude(flags.FLAGS.exclude)
  return config_lib.Config(**values)


def _flagfile() -> str:
  """The text of flags.txt: `--flagfile=RUN/flags.txt` reruns (or resumes) the run."""
  lines = [
      flag.serialize()
      for flag in flags.FLAGS.get_flags_for_module(__name__)
      if flag.value is not None
  ]
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
  cli.no_arguments(argv)
  cli.quiet_logs()
  values = flags.FLAGS
  if values.model_dir is None:
    if values.strategy == "multi_worker":
      sys.exit("error: --strategy=multi_worker needs --model_dir: one folder that every worker "
               "shares (NFS, GCS).")
    values.model_dir = _new_run_folder(values.model)  # so flags.txt names it
  resume = run_paths.RunPaths(values.model_dir).rerun
  print(f"run folder: {values.model_dir} (resume or rerun: {resume})", flush=True)
  _say_when_stopped_by_a_signal(resume)
  try:
    config = config_from_flags()
    train.train_and_evaluate(config, flagfile=_flagfile())  # only the chief writes it
  except (ValueError, devices.PeerLostError) as error:  # one line, no traceback
    sys.exit(f"error: {error}")
  except (MemoryError, tf.errors.ResourceExhaustedError):
    sys.exit(f"error: out of memory with --image_size={values.image_size} and "
             f"--batch_size={values.batch_size}: lower them, then run the same command "
             "again; it resumes from the last finished epoch.")
  except Exception as error:  # pylint: disable=broad-except
    if run_folder.is_disk_full(error):  # a write of TensorFlow's or a library's own
      sys.exit(f"error: {run_folder.NoSpaceLeft(values.model_dir)}")
    raise


def _say_when_stopped_by_a_signal(resume: str):
  """SIGTERM (a scheduler, `kill`) prints one line, then ends the process exactly as
  the default action would (exit status 143, nothing else run): the backup of
  the last finished epoch is what the resume starts from."""

  def stop(signal_number, frame):
    del frame
    print(f"stopped by {signal.Signals(signal_number).name}: resume with {resume}",
          file=sys.stderr,
          flush=True)
    signal.signal(signal_number, signal.SIG_DFL)
    os.kill(os.getpid(), signal_number)

  signal.signal(signal.SIGTERM, stop)


if __name__ == "__main__":
  define_flags()
  app.run(main)
