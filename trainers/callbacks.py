"""Callbacks whose state lives in the run folder, so a killed run resumes exactly."""

import csv
import dataclasses
import io
import json
import os
import time

from typing import Iterator, Optional

import keras
import numpy as np

from trainers import run_folder
from trainers import run_paths


class HistoryCsv(keras.callbacks.Callback):
  """Writes history.csv after every epoch; rows of epochs that are run again
  after a resume replace the old ones instead of doubling them."""

  def __init__(self, path: str, phase: str, epoch_offset: int = 0):
    super().__init__()
    self.path, self.phase, self.epoch_offset = path, phase, epoch_offset

  def on_epoch_end(self, epoch, logs=None):
    rows = read_history(self.path)
    epoch = epoch + self.epoch_offset
    rows = [row for row in rows if int(row["epoch"]) < epoch]
    rows.append({"epoch": epoch, "phase": self.phase,
                 **{key: float(value) for key, value in (logs or {}).items()}})
    columns = []
    for row in rows:
      columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    run_folder.atomic_write(self.path, buffer.getvalue().encode())


def read_history(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path, newline="") as file:
    return list(csv.DictReader(file))


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
  """EarlyStopping whose counters survive a restart (kept in a JSON file).

  `restore_from` (default: `state_path`) is read at the start; a non-chief
  worker reads the chief's file and writes its own copy elsewhere. Workers
  see the same cross-worker val_loss, so they all stop at the same epoch.
  """

  def __init__(self, state_path: str, restore_from: Optional[str] = None, **kwargs):
    super().__init__(**kwargs)
    self.state_path = state_path
    self.restore_from = restore_from or state_path

  def on_train_begin(self, logs=None):
    super().on_train_begin(logs)
    if os.path.exists(self.restore_from):
      with open(self.restore_from) as file:
        state = json.load(file)
      self.wait, self.best, self.best_epoch = state["wait"], state["best"], state["best_epoch"]

  def on_epoch_end(self, epoch, logs=None):
    super().on_epoch_end(epoch, logs)
    # "stopped" and the epochs done: a run killed after patience ran out, and
    # resumed from that epoch's backup, stops there too (`stopped_after`).
    run_folder.write_json(self.state_path, {
        "wait": self.wait, "best": None if self.best is None else float(self.best),
        "best_epoch": self.best_epoch, "epochs_done": epoch + 1,
        "stopped": bool(getattr(self.model, "stop_training", False))})


def stopped_after(state_path: str) -> Optional[int]:
  """The epochs a phase had done when early stopping ended it, per its saved state;
  None when it has not stopped (or no state was saved)."""
  try:
    with open(state_path) as file:
      state = json.load(file)
  except (OSError, ValueError):
    return None
  if isinstance(state, dict) and state.get("stopped") and isinstance(
      state.get("epochs_done"), int):
    return state["epochs_done"]
  return None


class Backup(keras.callbacks.BackupAndRestore):
  """Keras's BackupAndRestore, with files that are never half-written or mismatched.

  After every epoch, the previous pair is copied to `.bkp` (Keras's double
  checkpoint), the weights are written under a temporary name and renamed to
  latest.weights.h5, and training_metadata.json is written last with the
  epoch and the SHA-256 of those weights. A kill or a full disk at any point
  leaves at least one pair whose metadata matches its weights: `restore_pairs`
  finds it. A full disk is found before the weights are written (h5py does not
  fail cleanly halfway) and stops the run with one line. The metadata also holds
  the augmentation layers' seed-generator states, which Keras's weights files
  leave out, so a resumed run draws the augmentations an uninterrupted one would.
  """

  def __init__(self, backup_dir: str, settings_sha256: Optional[str] = None):
    super().__init__(backup_dir, delete_checkpoint=False, double_checkpoint=True)
    # The run's `config.settings_sha256`: shows whose backup this is when
    # config.json is lost.
    self.settings_sha256 = settings_sha256

  def _save_model(self):
    weights, metadata = self._weights_path, self._training_metadata_path
    if os.path.exists(weights) and os.path.exists(metadata):
      run_folder.atomic_copy(weights, self._prev_weights_path)
      run_folder.atomic_copy(metadata, self._prev_training_metadata_path)
    run_folder.replace_with(
        weights, lambda temporary: self.model.save_weights(temporary, overwrite=True),
        suffix=".weights.h5", expected_bytes=_weights_bytes(self.model, weights))
    run_folder.write_json(metadata, {"epoch": self._current_epoch,
                                     "batch": self._last_batch_seen,
                                     "weights_sha256": run_folder.sha256_of(weights),
                                     "settings_sha256": self.settings_sha256,
                                     "seed_states": [[int(value) for value in state.numpy()]
                                                     for state in seed_states(self.model)]})


def seed_states(model: keras.Model) -> list:
  """The seed-generator state variables of a model's random layers, in layer order."""
  return [variable for variable in model.non_trainable_variables
          if variable.path.endswith("seed_generator_state")]


def _restore_seed_states(model: keras.Model, metadata: str):
  """Puts back the seed states a backup's metadata recorded (none in older backups)."""
  with open(metadata) as file:
    recorded = json.load(file).get("seed_states")
  states = seed_states(model)
  if recorded is not None and len(recorded) == len(states):
    for state, value in zip(states, recorded):
      state.assign(np.asarray(value, dtype=state.dtype))


def _weights_bytes(model: keras.Model, previous: str) -> int:
  """About how large a weights file of `model` (with its optimizer state) is."""
  if os.path.exists(previous):
    return os.path.getsize(previous)
  variables = list(model.weights)
  if model.optimizer is not None:
    variables += list(model.optimizer.variables)
  return sum(int(np.prod(variable.shape)) * np.dtype(variable.dtype).itemsize
             for variable in variables) + (64 << 10)


def restore_pairs(backup_dir: str) -> Iterator[tuple[str, str, int]]:
  """(weights, metadata, epoch) of the backup pairs that match, newest first.

  A pair matches when its metadata records the SHA-256 of its weights file
  (`Backup` writes it), or, for a folder written by Keras's own callback,
  when both files are there (then loading tells).
  """
  weights = os.path.join(backup_dir, "latest.weights.h5")
  metadata = os.path.join(backup_dir, "training_metadata.json")
  for pair in ((weights, metadata), (weights + ".bkp", metadata + ".bkp")):
    if not all(os.path.exists(path) for path in pair):
      continue
    try:
      with open(pair[1]) as file:
        recorded = json.load(file)
      epoch = int(recorded["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
      continue
    if "weights_sha256" in recorded and recorded["weights_sha256"] != run_folder.sha256_of(pair[0]):
      continue
    yield pair[0], pair[1], epoch


class RestoreOnly(keras.callbacks.BackupAndRestore):
  """Restores from another process's BackupAndRestore folder, never writes it.

  For non-chief workers: they resume from the chief's backup, so every worker
  restarts from the same epoch and weights.
  """

  def __init__(self, backup_dir: str):
    super().__init__(backup_dir, delete_checkpoint=False)

  def on_epoch_end(self, epoch, logs=None):
    pass

  def on_train_batch_end(self, batch, logs=None):
    pass


class StepCounter(keras.callbacks.Callback):
  """Counts the training steps this process ran."""

  def __init__(self):
    super().__init__()
    self.count = 0

  def on_train_batch_end(self, batch, logs=None):
    self.count += 1


class PhaseClock(keras.callbacks.Callback):
  """Wall time and images trained of one phase, kept across resumes.

  `started` is when the phase began in this process (before any feature
  extraction or tracing). At every epoch end the phase's totals so far are
  saved, so a resumed run adds its own time to that of the finished epochs;
  time spent after the last finished epoch of a killed process is not counted.
  """

  def __init__(self, path: str, started: float, restore_from: Optional[str] = None,
               images_per_step: int = 0, cached_features: bool = False,
               settings_sha256: Optional[str] = None):
    super().__init__()
    self.path, self.started = path, started
    self.settings_sha256 = settings_sha256
    self.images_per_step, self.cached_features = images_per_step, cached_features
    self.previous = self.read(restore_from or path)
    self.images = 0

  @staticmethod
  def read(path: str) -> dict:
    """A saved clock; zeros when there is none."""
    clock = {"seconds": 0.0, "images": 0, "steps": 0, "cached_features": False}
    if os.path.exists(path):
      with open(path) as file:
        clock.update(json.load(file))
    clock.pop("settings_sha256", None)
    return clock

  def on_train_batch_end(self, batch, logs=None):
    self.images += self.images_per_step

  def on_epoch_end(self, epoch, logs=None):
    self._save(0)

  def finish(self, steps: int) -> dict:
    """Saves and returns the phase's clock ({seconds, images, steps, cached_features})."""
    return self._save(steps)

  def _save(self, steps: int) -> dict:
    clock = {"seconds": self.previous["seconds"] + time.time() - self.started,
             "images": self.previous["images"] + self.images, "steps": steps,
             "cached_features": self.cached_features}
    run_folder.write_json(self.path, {**clock, "settings_sha256": self.settings_sha256})
    return clock


@dataclasses.dataclass(frozen=True)
class PhaseCallbacks:
  """What `fit` gets for one phase, and where it resumes."""

  callbacks: list
  steps: StepCounter
  clock: PhaseClock
  first_epoch: int
  # Early stopping had ended the phase at the epoch its backup restores: no more
  # epochs train (a kill came after the stop, before the phase was marked done).
  stopped_early: bool = False


def phase_callbacks(model: keras.Model, *, paths: run_paths.RunPaths, own: run_paths.RunPaths,
                    phase: str, epoch_offset: int, is_chief: bool, strategy,
                    cached_features: bool, settings_sha256: str, images_per_step: int,
                    early_stopping_patience: int, started: float) -> PhaseCallbacks:
  """The callbacks of one phase, whose state lives in the run folder, and its first epoch.

  Args:
    model: the compiled model `fit` trains (the head alone on cached features).
    paths: the run folder (the chief's: backups are restored from it).
    own: where this process writes (the run folder for the chief, a scratch
      folder for another worker, which restores from the chief's backup).
    phase: "train" or "fine_tune".
    epoch_offset: epochs of the phases before (history.csv numbers them on).
    is_chief: the chief writes backups, history and logs.
    strategy: the run's distribution strategy.
    cached_features: the head trains on cached features (its own backup folder).
    settings_sha256: `config.settings_sha256`, recorded in backups and the clock.
    images_per_step: the global batch.
    early_stopping_patience: 0 for none.
    started: when the phase began in this process.
  """
  backup_dir = paths.backup(phase, cached=cached_features)
  first_epoch = restored_epoch(model, backup_dir, strategy)
  steps = StepCounter()
  clock = PhaseClock(own.clock(phase), started, restore_from=paths.clock(phase),
                     images_per_step=images_per_step, cached_features=cached_features,
                     settings_sha256=settings_sha256)
  callbacks = [steps, clock]
  if is_chief:
    callbacks += [Backup(backup_dir, settings_sha256),
                  HistoryCsv(own.history, phase, epoch_offset),
                  keras.callbacks.TensorBoard(own.logs(phase))]
  else:
    callbacks.append(RestoreOnly(backup_dir))
  stopped_early = False
  if early_stopping_patience:
    callbacks.append(ResumableEarlyStopping(
        own.early_stopping(phase), restore_from=paths.early_stopping(phase),
        monitor="val_loss", patience=early_stopping_patience))
    stopped_early = first_epoch > 0 and stopped_after(paths.early_stopping(phase)) == first_epoch
  return PhaseCallbacks(callbacks, steps, clock, first_epoch, stopped_early)


def restored_epoch(model, backup_dir: str, strategy) -> int:
  """The epoch to resume from: the one of the weights that are actually restored.

  The newest backup pair whose metadata matches its weights and whose weights
  load is put in place as latest.weights.h5 + training_metadata.json, so
  Keras's BackupAndRestore restores that same pair at the start of `fit`, and
  the data stream skips exactly its epochs. Weights without any metadata are
  from an epoch that never finished saving: they are set aside and the phase
  starts again. Metadata whose weights never load stops the run with one line.
  """
  weights = os.path.join(backup_dir, "latest.weights.h5")
  metadata = os.path.join(backup_dir, "training_metadata.json")
  pairs = list(restore_pairs(backup_dir))
  if not pairs:
    if any(os.path.exists(path) for path in (metadata, metadata + ".bkp")):
      raise ValueError(f"the backup in {backup_dir} cannot be read (no weights file matches "
                       f"its metadata): delete {backup_dir} to train this phase again from "
                       "its start.")
    if os.path.exists(weights):  # cut short before its metadata was written
      os.replace(weights, weights + ".unfinished")
      print(f"info: {weights} is from an epoch that never finished saving; set aside as "
            f"{weights}.unfinished, the phase starts again.", flush=True)
    return 0
  with strategy.scope():
    if model.optimizer is not None and not model.optimizer.built:
      model.optimizer.build(model.trainable_variables)  # its state is in the file too
  errors = []
  for pair_weights, pair_metadata, epoch in pairs:
    loadable = pair_weights
    if pair_weights != weights:  # Keras loads only names ending in .weights.h5
      loadable = os.path.join(backup_dir, "previous.weights.h5")
      run_folder.atomic_copy(pair_weights, loadable)
    try:
      model.load_weights(loadable)
    except Exception as error:  # pylint: disable=broad-except  (h5py, Keras: many types)
      errors.append(type(error).__name__)
      if loadable != weights:
        os.remove(loadable)
      continue
    if loadable != weights:  # the previous pair: Keras restores it from the usual names
      os.replace(loadable, weights)
      run_folder.atomic_copy(pair_metadata, metadata)
      print(f"info: {weights} cannot be used; resuming from the previous backup, after "
            f"epoch {epoch}.", flush=True)
    _restore_seed_states(model, metadata)
    return epoch
  raise ValueError(f"the backup {weights} cannot be loaded ({', '.join(errors)}) and neither "
                   f"can its previous copy: delete {backup_dir} to train this phase again "
                   "from its start.")
