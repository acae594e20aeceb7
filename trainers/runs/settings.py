"""A run folder's settings file (config.json), and what a run may change on a resume.

The trainer writes the run's `Config` to RUN/config.json (`save`); `load` gives
the same `Config` back to predict, export, compare and the tests (flags.txt
stays, for rerunning the command line). `settings_sha256` is the hash every
backup, feature file, clock and metrics.json records, so a folder whose
config.json is lost can still be matched to a command.
"""

import dataclasses
import glob
import hashlib
import json
import os
import typing
from typing import Optional

from trainers import config as config_lib
from trainers.runs import run_folder
from trainers.runs import run_paths

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
SETTINGS_KEY = run_paths.SETTINGS_KEY


def settings_sha256(config: config_lib.Config) -> str:
  """A hash of the settings a run may not resume with changed (not RESUMABLE_CHANGES).

  Written into every backup, feature file and metrics.json, so a run folder
  whose config.json is lost or damaged can still be shown to match a command.
  """
  values = {name: value for name, value in dataclasses.asdict(config).items()
            if name not in RESUMABLE_CHANGES}
  if config.schedule != "constant":  # the schedule spans each phase: its length is fixed
    values.update(epochs=config.epochs, fine_tune_epochs=config.fine_tune_epochs)
  defaults = {field.name: field.default for field in dataclasses.fields(config_lib.Config)}
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
  for pattern in (f"*/{run_paths.BACKUP_METADATA}*", "*.clock.json"):
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


def check_resumable(config: config_lib.Config):
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


def check_finished(config: config_lib.Config, metrics: dict):
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


def _changes(before: config_lib.Config, now: config_lib.Config, fixed: tuple = ()) -> list[str]:
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
      changes.append(config_lib.exclude_change(before.exclude, now.exclude))
    elif name != "exclude_sha256":  # said with exclude
      changes.append(f"--{name}={getattr(before, name)!r} before, {getattr(now, name)!r} now")
  return changes


def save(config: config_lib.Config):
  """Writes RUN/config.json (atomically)."""
  run_folder.write_json(run_paths.RunPaths(config.model_dir).config, dataclasses.asdict(config))


def load(model_dir: str) -> config_lib.Config:
  """The `Config` a run folder was trained with, from its config.json.

  Raises:
    ValueError: no (readable) config.json, or one this version cannot read.
  """
  paths = run_paths.RunPaths(model_dir)
  path = paths.config
  try:
    with open(path) as file:
      values = json.load(file)
  except FileNotFoundError:
    raise ValueError(f"{model_dir} is not a run folder (no config.json): train one with "
                     "python -m trainers.main first.") from None
  except (OSError, ValueError) as error:
    raise ValueError(f"{path} is unreadable ({error}): rerun the run's command "
                     f"({paths.rerun}) to write it again.") from None
  if not isinstance(values, dict) or not isinstance(values.get("model"), str):
    raise ValueError(f"{path} is unreadable (not a run's settings): rerun the run's command "
                     f"({paths.rerun}) to write it again.")
  fields = {field.name: field for field in dataclasses.fields(config_lib.Config)}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ValueError(f"{path} has settings this version does not know ({', '.join(unknown)}): "
                     "use the version of this code that trained it.")
  if isinstance(values.get("augment"), bool):  # written before --augment took a policy
    values["augment"] = "study" if values["augment"] else "none"
  hints = typing.get_type_hints(config_lib.Config)
  for name, value in values.items():
    if typing.get_origin(hints[name]) is tuple:
      values[name] = tuple(value)
  # The folder it is read from, even if it was moved since training.
  return dataclasses.replace(config_lib.Config(**values), model_dir=model_dir)


def load_finished(model_dir: str) -> config_lib.Config:
  """`load`, for a run that has its model.keras (predict, export)."""
  config = load(model_dir)
  paths = run_paths.RunPaths(model_dir)
  if not os.path.exists(paths.model):
    raise ValueError(f"{model_dir} is not a finished run (no model.keras): train it to the "
                     f"end with {paths.rerun}.")
  return config
