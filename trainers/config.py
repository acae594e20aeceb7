"""The one frozen configuration of a training run, and its checks.

`trainers.main` builds it from flags; everything below takes it as a plain object,
so tests build a `Config` directly. The run folder's copy of it (config.json) is
`trainers.runs.settings`.
"""

import csv
import dataclasses
import hashlib
import io
import math
from typing import Optional


RESIZE_MODES = ("crop", "stretch")
BALANCE_MODES = ("none", "undersample", "class_weight")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
# --augment: none; study (flips, small rotations, zoom, contrast: the bare flag, as the
# study's flagfiles say it); randaugment (Keras's RandAugment, 2 ops at factor 0.5).
AUGMENT_POLICIES = ("none", "study", "randaugment")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")
# Largest --image_size: past it one batch of activations of any registry model
# needs tens of GB (the ImageNet backbones were trained at 224-600 px).
MAX_IMAGE_SIZE = 1024
# The trainer's dataset: the 160 px config decodes 3-4x faster than the full one.
DATASET = "animals10_tfds/160px"


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that defines a run. Defaults follow the study's base model."""

  model: str
  model_dir: str
  dataset: str = DATASET
  data_dir: Optional[str] = None
  image_size: int = 100
  resize: str = "crop"
  batch_size: int = 24
  epochs: int = 10
  learning_rate: float = 1e-3
  early_stopping_patience: int = 0  # 0: no early stopping
  augment: str = "none"  # one of AUGMENT_POLICIES
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
  cache_features: bool = True  # transfer models: train above the frozen part on its cached output
  steps_per_epoch: int = 0  # 0: one full pass of the training split
  virtual_devices: int = 0  # split the CPU into N logical devices (tests)
  cluster_timeout: float = 300  # seconds for every multi-worker task to join
  allow_empty_classes: bool = False  # train although a class has no train image
  # Records left out (file names from --exclude=FILE, sorted) and the list's SHA-256;
  # from the test split too only with exclude_test.
  exclude: tuple[str, ...] = ()
  exclude_sha256: str = ""
  exclude_test: bool = False
  # The modern recipe; each default is the study's recipe, so older runs keep their meaning.
  label_smoothing: float = 0.0
  optimizer: str = "adam"
  weight_decay: float = 0.0  # decoupled (AdamW); needs --optimizer=adamw
  schedule: str = "constant"  # the learning rate over each phase
  warmup_epochs: int = 0  # of each phase, from 0 up to its learning rate
  mixup: float = 0.0  # MixUp's alpha; 0: off
  cutmix: float = 0.0  # CutMix's alpha; 0: off
  ema: bool = False  # evaluate and save the exponential moving average of the weights
  ema_momentum: float = 0.99
  tta: bool = False  # evaluate on each test image and its mirror image, averaged
  # Recorded only: the flags tools.reproduce put after an experiment's flagfile.
  overrides: tuple[str, ...] = ()

  def __post_init__(self):
    _check(self)


def read_exclude(path: str) -> tuple[tuple[str, ...], str]:
  """(sorted file names, SHA-256 of the list) of an --exclude file.

  A CSV whose header has a `file_name` column (such as tools.audit's audit.csv,
  filtered by hand, or saved by Excel as "CSV UTF-8" with its byte-order mark and
  CRLF) gives that column, parsed as CSV: a quoted name keeps its newlines, spaces
  and any other character the build accepts, so audit.csv round-trips exactly. Any
  other file is a plain list, one name per line as written (blank lines and lines
  starting with # skipped; a CRLF line end is not part of the name).

  Raises:
    ValueError: one line, when the file cannot be read or names nothing.
  """
  try:
    with open(path, newline="", encoding="utf-8-sig") as file:
      text = file.read()
  except (OSError, UnicodeDecodeError) as error:
    reason = getattr(error, "strerror", None) or error
    raise ValueError(f"--exclude={path} cannot be read ({reason}): give a CSV with a "
                     "file_name column or a list of file names.") from None
  first_line = text.split("\n", 1)[0].rstrip("\r")
  header = next(csv.reader([first_line]), [])
  if "file_name" in header:
    rows = csv.DictReader(io.StringIO(text, newline=""))
    names = [row.get("file_name") or "" for row in rows]
  elif "file_name" in first_line and any(sep in first_line for sep in ";\t|"):
    separator = next(sep for sep in ";\t|" if sep in first_line)
    raise ValueError(f"--exclude={path} is a CSV separated by {separator!r} (as Excel saves "
                     "it in some locales): save it with commas (\"CSV UTF-8\"), or give one "
                     "file name per line.")
  else:
    names = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    names = [line for line in names if line.strip() and not line.startswith("#")]
  names = sorted({name for name in names if name.strip()})
  if not names:
    raise ValueError(f"--exclude={path} names no file: give a CSV with a file_name column "
                     "or a list of file names, one per line.")
  return tuple(names), hashlib.sha256("\n".join(names).encode()).hexdigest()


def exclude_change(before: tuple, now: tuple) -> str:
  """How an --exclude list changed, in a few words (never the lists whole)."""
  added, removed = sorted(set(now) - set(before)), sorted(set(before) - set(now))
  examples = [f"+{name!r}" for name in added[:3]] + [f"-{name!r}" for name in removed[:3]]
  return (f"--exclude lists {len(added)} name(s) more and {len(removed)} fewer than the "
          f"{len(before)} the run has (e.g. {', '.join(examples[:3])})")


def _check(config: Config):
  """Raises ValueError with an actionable sentence for a bad combination."""
  if config.exclude_test and not config.exclude:
    raise ValueError("--exclude_test needs --exclude=FILE (the records to leave out).")
  choices = {"resize": RESIZE_MODES, "balance": BALANCE_MODES,
             "precision": PRECISIONS, "strategy": STRATEGIES, "augment": AUGMENT_POLICIES,
             "optimizer": OPTIMIZERS, "schedule": SCHEDULES}
  for name, allowed in choices.items():
    if getattr(config, name) not in allowed:
      raise ValueError(f"--{name}={getattr(config, name)} is not one of "
                       f"{', '.join(allowed)}.")
  positive = ("image_size", "batch_size", "epochs")
  for name in positive:
    if getattr(config, name) < 1:
      raise ValueError(f"--{name} must be at least 1, got {getattr(config, name)}.")
  if config.image_size > MAX_IMAGE_SIZE:
    raise ValueError(f"--image_size={config.image_size} is above {MAX_IMAGE_SIZE}: one batch "
                     "would need tens of GB; use at most "
                     f"{MAX_IMAGE_SIZE} (the study used 100, ImageNet backbones 224).")
  if config.steps_per_epoch < 0:
    raise ValueError(f"--steps_per_epoch must be 0 (one pass) or positive, got "
                     f"{config.steps_per_epoch}.")
  for name in ("learning_rate", "fine_tune_learning_rate"):
    value = getattr(config, name)
    if not (math.isfinite(value) and value > 0):  # NaN fails every comparison
      raise ValueError(f"--{name} must be a positive number, got {value}.")
  if config.fine_tune and (config.fine_tune_epochs < 1 or config.fine_tune_layers < 1):
    raise ValueError("--fine_tune needs --fine_tune_epochs and --fine_tune_layers >= 1.")
  _check_recipe(config)
  if any(units < 1 for units in config.head_units):
    raise ValueError(f"--head_units must be positive, got {config.head_units}.")
  if config.cluster_timeout <= 0:
    raise ValueError(f"--cluster_timeout must be positive, got {config.cluster_timeout}.")
  if config.strategy == "tpu" and not config.tpu:
    raise ValueError("--strategy=tpu needs --tpu=NAME_OR_ADDRESS.")


MIX_ALPHA_MAX = 100.0


def _check_recipe(config: Config):
  """The modern recipe's flags: ranges, and combinations that would mean nothing."""
  # MixUp's and CutMix's alpha past MIX_ALPHA_MAX only mixes every pair closer to half and
  # half, and from about 1e30 Beta's sampling overflows to NaN.
  bounded = {"label_smoothing": (0, 1), "mixup": (0, MIX_ALPHA_MAX),
             "cutmix": (0, MIX_ALPHA_MAX),
             "weight_decay": (0, math.inf), "ema_momentum": (0, 1)}
  for name, (low, high) in bounded.items():
    value = getattr(config, name)
    if not low <= value < high:  # NaN fails every comparison
      raise ValueError(f"--{name} must be in [{low}, {high}), got {value}.")
  if config.optimizer == "adam" and config.weight_decay:
    raise ValueError(f"--weight_decay={config.weight_decay} needs --optimizer=adamw (decoupled "
                     "weight decay); --optimizer=adam takes none.")
  if config.optimizer == "adamw" and not config.weight_decay:
    raise ValueError("--optimizer=adamw needs --weight_decay above 0 (0.05 is common): with "
                     "none it is --optimizer=adam.")
  if config.warmup_epochs < 0:
    raise ValueError(f"--warmup_epochs must be 0 or more, got {config.warmup_epochs}.")
  if config.warmup_epochs and config.schedule == "constant":
    raise ValueError("--warmup_epochs needs --schedule=cosine (the warm-up leads into its "
                     "decay).")
  phases = [("epochs", config.epochs)]
  if config.fine_tune:
    phases.append(("fine_tune_epochs", config.fine_tune_epochs))
  for name, epochs in phases:
    if config.warmup_epochs >= epochs:
      raise ValueError(f"--warmup_epochs={config.warmup_epochs} leaves no epoch of --{name}="
                       f"{epochs} to decay in: use fewer warm-up epochs.")
  if config.ema_momentum != Config.ema_momentum and not config.ema:
    raise ValueError("--ema_momentum needs --ema.")
