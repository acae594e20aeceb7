"""The one frozen configuration of a training run, its checks, and its file.

`trainers.main` builds it from flags; everything below takes it as a plain object,
so tests build a `Config` directly. The trainer writes it to RUN/config.json
(`save`); `load` gives the same `Config` back to predict, export, compare and
the tests (flags.txt stays, for rerunning the command line).
"""

import dataclasses
import json
import os
import typing
from typing import Optional

from trainers import run_folder

CONFIG_FILE = "config.json"

RESIZE_MODES = ("crop", "stretch")
BALANCE_MODES = ("none", "undersample", "class_weight")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that defines a run. Defaults follow the study's base model."""

  model: str
  model_dir: str
  dataset: str = "animals10_tfds/160px"
  data_dir: Optional[str] = None
  image_size: int = 100
  resize: str = "crop"
  batch_size: int = 24
  epochs: int = 10
  learning_rate: float = 1e-3
  early_stopping_patience: int = 0  # 0: no early stopping
  augment: bool = False
  balance: str = "none"
  keep_formats: tuple[str, ...] = ()
  keep_modes: tuple[str, ...] = ()
  keep_orientations: tuple[str, ...] = ()
  fine_tune: bool = False
  fine_tune_epochs: int = 5
  fine_tune_learning_rate: float = 1e-5
  fine_tune_layers: int = 30
  head_units: tuple[int, ...] = (128,)
  weights: str = "imagenet"  # imagenet, none, or a weights file path
  precision: str = "auto"
  strategy: str = "auto"
  tpu: str = ""
  seed: int = 0
  deterministic: bool = False
  cache: bool = False
  cache_features: bool = True  # frozen phase of transfer models: head on cached features
  steps_per_epoch: int = 0  # 0: one full pass of the training split
  virtual_devices: int = 0  # split the CPU into N logical devices (tests)
  cluster_timeout: float = 300  # seconds for every multi-worker task to join

  def __post_init__(self):
    _check(self)


def _check(config: Config):
  """Raises ValueError with an actionable sentence for a bad combination."""
  choices = {"resize": RESIZE_MODES, "balance": BALANCE_MODES,
             "precision": PRECISIONS, "strategy": STRATEGIES}
  for name, allowed in choices.items():
    if getattr(config, name) not in allowed:
      raise ValueError(f"--{name}={getattr(config, name)} is not one of "
                       f"{', '.join(allowed)}.")
  positive = ("image_size", "batch_size", "epochs")
  for name in positive:
    if getattr(config, name) < 1:
      raise ValueError(f"--{name} must be at least 1, got {getattr(config, name)}.")
  if config.learning_rate <= 0 or config.fine_tune_learning_rate <= 0:
    raise ValueError("Learning rates must be positive.")
  if config.fine_tune and (config.fine_tune_epochs < 1 or config.fine_tune_layers < 1):
    raise ValueError("--fine_tune needs --fine_tune_epochs and --fine_tune_layers >= 1.")
  if any(units < 1 for units in config.head_units):
    raise ValueError(f"--head_units must be positive, got {config.head_units}.")
  if config.cluster_timeout <= 0:
    raise ValueError(f"--cluster_timeout must be positive, got {config.cluster_timeout}.")
  if config.strategy == "tpu" and not config.tpu:
    raise ValueError("--strategy=tpu needs --tpu=NAME_OR_ADDRESS.")


# Settings a run may resume with changed: where it runs, how fast, and for how
# many epochs. Any other change would pair backups with a different run.
RESUMABLE_CHANGES = ("model_dir", "data_dir", "strategy", "tpu", "virtual_devices",
                     "cluster_timeout", "cache", "cache_features", "deterministic", "epochs",
                     "fine_tune_epochs", "early_stopping_patience")


def check_resumable(config: Config):
  """Raises ValueError when RUN/config.json holds a run of other settings."""
  if not os.path.exists(os.path.join(config.model_dir, CONFIG_FILE)):
    return
  before = dataclasses.asdict(load(config.model_dir))
  now = dataclasses.asdict(config)
  changed = [f"--{name}={before[name]!r} before, {now[name]!r} now" for name in now
             if name not in RESUMABLE_CHANGES and now[name] != before[name]]
  if changed:
    raise ValueError(f"{config.model_dir} holds a run with other settings ({'; '.join(changed)}): "
                     "use a new --model_dir, or resume it with "
                     f"--flagfile={os.path.join(config.model_dir, 'flags.txt')}.")


def save(config: Config):
  """Writes RUN/config.json (atomically)."""
  run_folder.write_json(os.path.join(config.model_dir, CONFIG_FILE), dataclasses.asdict(config))


def load(model_dir: str) -> Config:
  """The `Config` a run folder was trained with, from its config.json.

  Raises:
    ValueError: no (readable) config.json, or one this version cannot read.
  """
  path = os.path.join(model_dir, CONFIG_FILE)
  try:
    with open(path) as file:
      values = json.load(file)
  except FileNotFoundError:
    raise ValueError(f"{model_dir} is not a run folder (no {CONFIG_FILE}): train one with "
                     "python -m trainers.main first.") from None
  except (OSError, ValueError) as error:
    raise ValueError(f"{path} is unreadable ({error}): rerun the run's command (python -m "
                     f"trainers.main --flagfile={os.path.join(model_dir, 'flags.txt')}) to "
                     "write it again.") from None
  fields = {field.name: field for field in dataclasses.fields(Config)}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ValueError(f"{path} has settings this version does not know ({', '.join(unknown)}): "
                     "use the version of this code that trained it.")
  hints = typing.get_type_hints(Config)
  for name, value in values.items():
    if typing.get_origin(hints[name]) is tuple:
      values[name] = tuple(value)
  # The folder it is read from, even if it was moved since training.
  return dataclasses.replace(Config(**values), model_dir=model_dir)


def load_finished(model_dir: str) -> Config:
  """`load`, for a run that has its model.keras (predict, export)."""
  config = load(model_dir)
  if not os.path.exists(os.path.join(model_dir, "model.keras")):
    raise ValueError(f"{model_dir} is not a finished run (no model.keras): train it to the "
                     f"end with python -m trainers.main --flagfile="
                     f"{os.path.join(model_dir, 'flags.txt')}.")
  return config
