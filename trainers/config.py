"""The one frozen configuration of a training run, and its checks.

`trainers.main` builds it from flags; everything below takes it as a plain object,
so tests build a `Config` directly.
"""

import dataclasses
import os
from typing import Optional

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


def run_settings(model_dir: str) -> dict:
  """The flags a run was trained with, from its flags.txt."""
  path = os.path.join(model_dir, "flags.txt")
  if not os.path.exists(os.path.join(model_dir, "model.keras")) or not os.path.exists(path):
    raise ValueError(f"{model_dir} is not a finished run (no model.keras or flags.txt): "
                     "train one with python -m trainers.main first.")
  settings = {}
  with open(path) as file:
    for line in file:
      if line.startswith("--") and "=" in line:
        key, value = line[2:].rstrip("\n").split("=", 1)
        settings[key] = value
  return settings
