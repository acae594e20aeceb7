"""The one frozen configuration of a training run, its checks, and its file.

`trainers.main` builds it from flags; everything below takes it as a plain object,
so tests build a `Config` directly. The trainer writes it to RUN/config.json
(`save`); `load` gives the same `Config` back to predict, export, compare and
the tests (flags.txt stays, for rerunning the command line).
"""

import csv
import dataclasses
import glob
import hashlib
import io
import json
import math
import os
import typing
from typing import Optional

from trainers import run_folder
from trainers import run_paths

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
  # The modern recipe (issue 23); each default is the study's recipe.
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


# Settings a run may resume with changed: where it runs, how fast, and for how
# many epochs. Any other change would pair backups with a different run.
RESUMABLE_CHANGES = ("model_dir", "data_dir", "strategy", "tpu", "virtual_devices",
                     "cluster_timeout", "cache", "cache_features", "deterministic", "epochs",
                     "fine_tune_epochs", "early_stopping_patience", "allow_empty_classes",
                     "overrides")
# Of those, the ones that set how long a run trains: a finished run rerun with them
# changed is refused (it would report the old result as if of the new length).
FINISHED_LENGTH = ("epochs", "fine_tune_epochs", "early_stopping_patience")
# Settings that may differ between the seeds of one experiment (tools.compare):
# where and how fast it ran. Anything else means the runs are not one experiment.
SAME_EXPERIMENT_EXCEPT = ("seed", "model_dir", "data_dir", "strategy", "tpu",
                          "virtual_devices", "cluster_timeout", "cache", "cache_features",
                          "allow_empty_classes", "overrides")
# Settings added after runs existed: hashed only when not at their default, so
# the runs of older versions keep their settings hash.
ADDED_UNSET_UNHASHED = ("exclude", "exclude_sha256", "exclude_test", "label_smoothing",
                        "optimizer", "weight_decay", "schedule", "warmup_epochs", "mixup",
                        "cutmix", "ema", "ema_momentum", "tta")
# --augment was a bool before it took a policy: hashed as one for these two.
_AUGMENT_AS_BOOL = {"none": False, "study": True}
# The key under which backups, cached features, clocks and metrics.json record
# the `settings_sha256` of the run that made them.
SETTINGS_KEY = "settings_sha256"


def settings_sha256(config: Config) -> str:
  """A hash of the settings a run may not resume with changed (not RESUMABLE_CHANGES).

  Written into every backup, feature file and metrics.json, so a run folder
  whose config.json is lost or damaged can still be shown to match a command.
  """
  values = {name: value for name, value in dataclasses.asdict(config).items()
            if name not in RESUMABLE_CHANGES}
  if config.schedule != "constant":  # the schedule spans each phase: its length is fixed
    values.update(epochs=config.epochs, fine_tune_epochs=config.fine_tune_epochs)
  defaults = {field.name: field.default for field in dataclasses.fields(Config)}
  for name in ADDED_UNSET_UNHASHED:  # so runs of older versions keep their hash
    if values[name] == defaults[name]:
      del values[name]
  values["augment"] = _AUGMENT_AS_BOOL.get(values["augment"], values["augment"])
  return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def recorded_settings(model_dir: str) -> list[tuple[str, Optional[str]]]:
  """(file, settings_sha256) of the backups and cached features a run folder holds.

  Every metadata file (backup pair metadata, phase clocks, feature metadata)
  counts: one written by an older version has no hash (None).
  """
  paths = run_paths.RunPaths(model_dir)
  found = []
  for pattern in ("*/training_metadata.json*", "*.clock.json"):
    found += glob.glob(os.path.join(paths.backup_root, pattern))
  found += glob.glob(os.path.join(paths.features_root, "*", "*.meta.json"))
  recorded = []
  for path in sorted(found):
    if os.path.basename(path).startswith(".tmp-"):
      continue
    try:
      with open(path) as file:
        recorded.append((path, json.load(file).get(SETTINGS_KEY)))
    except (OSError, ValueError, AttributeError):
      recorded.append((path, None))
  return recorded


def check_resumable(config: Config):
  """Raises ValueError unless the run folder's work so far is this config's.

  With a readable config.json, the settings are compared; a folder with no
  finished epoch (a run that failed at its start) has nothing to protect, and
  takes the new settings. Without a readable config.json, the settings hash
  recorded in every backup and feature file must be this config's.
  """
  paths = run_paths.RunPaths(config.model_dir)
  recorded = recorded_settings(config.model_dir)
  resume = f"--flagfile={paths.flags}"
  before = None
  if os.path.exists(paths.config):
    try:
      before = load(config.model_dir)
    except ValueError:
      before = None  # judged by the hashes below, then written again
  if before is not None:
    changed = _changes(before, config)
    if changed and recorded:
      if before.exclude != config.exclude:  # its flagfile names the changed list file
        resume = ("the --exclude file as it was (its names are the \"exclude\" list of "
                  f"{paths.config})")
      raise ValueError(f"{config.model_dir} holds a run with other settings "
                       f"({'; '.join(changed)}): use a new --model_dir, or resume it with "
                       f"{resume}.")
    if changed:
      print(f"info: {config.model_dir} holds no finished epoch of its earlier settings; "
            "this command's settings replace them.", flush=True)
    return
  mine = settings_sha256(config)
  other = [path for path, recorded_hash in recorded if recorded_hash != mine]
  if other:
    raise ValueError(f"{config.model_dir} has no readable config.json and {other[0]} was made "
                     "with other settings (or by an older version): resume it with the "
                     f"command that trained it ({resume}), or use a new --model_dir.")
  if recorded:
    print(f"info: {paths.config} was missing or unreadable; the run's backups match this "
          "command's settings, so it is written again.", flush=True)


def check_finished(config: Config, metrics: dict):
  """For a finished run: refuses a command of other settings, and writes a lost or
  damaged config.json again when metrics.json shows the run had this config's
  settings."""
  paths = run_paths.RunPaths(config.model_dir)
  recorded, mine = metrics.get(SETTINGS_KEY), settings_sha256(config)
  try:
    before = load(config.model_dir)
  except ValueError:
    before = None
  if before is not None:
    # A finished run's length is part of its result, though a killed run may resume
    # with it changed (fine-tuning's only where the run fine-tunes).
    fixed = tuple(name for name in FINISHED_LENGTH
                  if name != "fine_tune_epochs" or config.fine_tune)
    changes = _changes(before, config, fixed)
    if (recorded is not None and recorded != mine) or changes:
      raise ValueError(f"{config.model_dir} holds a finished run with other settings "
                       f"({'; '.join(changes) or 'its settings hash differs'}): use a new "
                       "--model_dir to train with these.")
    return
  if recorded is None:
    raise ValueError(f"{paths.config} is missing or unreadable, and the finished run in "
                     f"{config.model_dir} (made by an older version) records no settings to "
                     "check this command against: put back a copy of config.json, or train "
                     "again in a new --model_dir.")
  if recorded != mine:
    raise ValueError(f"{paths.config} is missing or unreadable, and this command's settings "
                     f"are not those of the finished run in {config.model_dir}: run the "
                     f"command that trained it (--flagfile={paths.flags}) to write it again.")
  save(config)
  print(f"info: {paths.config} was missing or unreadable; written again from this "
        "command, whose settings match the finished run's.", flush=True)


def _changes(before: Config, now: Config, fixed: tuple = ()) -> list[str]:
  """`--name=old before, new now` for each setting that may not change on a resume, and
  for the `fixed` ones of RESUMABLE_CHANGES."""
  fixed = set(fixed)
  if now.schedule != "constant":  # the schedule spans each phase: its length is fixed
    fixed |= {"epochs", "fine_tune_epochs"}
  resumable = tuple(name for name in RESUMABLE_CHANGES if name not in fixed)
  changes = []
  for name in dataclasses.asdict(now):
    if name in resumable or getattr(now, name) == getattr(before, name):
      continue
    if name == "exclude":
      changes.append(exclude_change(before.exclude, now.exclude))
    elif name != "exclude_sha256":  # said with exclude
      changes.append(f"--{name}={getattr(before, name)!r} before, {getattr(now, name)!r} now")
  return changes


def save(config: Config):
  """Writes RUN/config.json (atomically)."""
  run_folder.write_json(run_paths.RunPaths(config.model_dir).config, dataclasses.asdict(config))


def load(model_dir: str) -> Config:
  """The `Config` a run folder was trained with, from its config.json.

  Raises:
    ValueError: no (readable) config.json, or one this version cannot read.
  """
  path = run_paths.RunPaths(model_dir).config
  try:
    with open(path) as file:
      values = json.load(file)
  except FileNotFoundError:
    raise ValueError(f"{model_dir} is not a run folder (no config.json): train one with "
                     "python -m trainers.main first.") from None
  except (OSError, ValueError) as error:
    raise ValueError(f"{path} is unreadable ({error}): rerun the run's command (python -m "
                     f"trainers.main --flagfile={run_paths.RunPaths(model_dir).flags}) to "
                     "write it again.") from None
  if not isinstance(values, dict) or not isinstance(values.get("model"), str):
    raise ValueError(f"{path} is unreadable (not a run's settings): rerun the run's command "
                     f"(python -m trainers.main --flagfile={run_paths.RunPaths(model_dir).flags}) "
                     "to write it again.")
  fields = {field.name: field for field in dataclasses.fields(Config)}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ValueError(f"{path} has settings this version does not know ({', '.join(unknown)}): "
                     "use the version of this code that trained it.")
  if isinstance(values.get("augment"), bool):  # written before --augment took a policy
    values["augment"] = "study" if values["augment"] else "none"
  hints = typing.get_type_hints(Config)
  for name, value in values.items():
    if typing.get_origin(hints[name]) is tuple:
      values[name] = tuple(value)
  # The folder it is read from, even if it was moved since training.
  return dataclasses.replace(Config(**values), model_dir=model_dir)


def load_finished(model_dir: str) -> Config:
  """`load`, for a run that has its model.keras (predict, export)."""
  config = load(model_dir)
  if not os.path.exists(run_paths.RunPaths(model_dir).model):
    raise ValueError(f"{model_dir} is not a finished run (no model.keras): train it to the "
                     f"end with python -m trainers.main --flagfile="
                     f"{run_paths.RunPaths(model_dir).flags}.")
  return config
