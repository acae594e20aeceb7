"""Callbacks whose state lives in the run folder, so a killed run resumes exactly."""

import dataclasses
import json
import os
import time

from typing import Optional

import keras

from trainers.runs import history
from trainers.runs import run_folder
from trainers.runs import run_paths
from trainers.training import backups


class HistoryCsv(keras.callbacks.Callback):
  """Writes history.csv after every epoch (`history.add_epoch`)."""

  def __init__(self, path: str, phase: str, epoch_offset: int = 0):
    super().__init__()
    self.path, self.phase, self.epoch_offset = path, phase, epoch_offset

  def on_epoch_end(self, epoch, logs=None):
    history.add_epoch(self.path, epoch + self.epoch_offset, self.phase, logs)


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
    clock.pop(run_paths.SETTINGS_KEY, None)
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
    run_folder.write_json(self.path, {**clock, run_paths.SETTINGS_KEY: self.settings_sha256})
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


def phase_callbacks(model: keras.Model, *, paths: run_paths.RunPaths,
                    writes_to: run_paths.RunPaths,
                    phase: str, epoch_offset: int, is_chief: bool, strategy,
                    cached_features: bool, settings_sha256: str, images_per_step: int,
                    early_stopping_patience: int, started: float) -> PhaseCallbacks:
  """The callbacks of one phase, whose state lives in the run folder, and its first epoch.

  Args:
    model: the compiled model `fit` trains (the head alone on cached features).
    paths: the run folder (the chief's: backups are restored from it).
    writes_to: where this process writes (the run folder for the chief, a scratch
      folder for another worker, which restores from the chief's backup).
    phase: "train" or "fine_tune".
    epoch_offset: epochs of the phases before (history.csv numbers them on).
    is_chief: the chief writes backups, history and logs.
    strategy: the run's distribution strategy.
    cached_features: the head trains on cached features (its own backup folder).
    settings_sha256: `settings.settings_sha256`, recorded in backups and the clock.
    images_per_step: the global batch.
    early_stopping_patience: 0 for none.
    started: when the phase began in this process.
  """
  backup_dir = paths.backup(phase, cached=cached_features)
  first_epoch = backups.restored_epoch(model, backup_dir, strategy)
  steps = StepCounter()
  clock = PhaseClock(writes_to.clock(phase), started, restore_from=paths.clock(phase),
                     images_per_step=images_per_step, cached_features=cached_features,
                     settings_sha256=settings_sha256)
  callbacks = [steps, clock]
  if is_chief:
    callbacks += [backups.Backup(backup_dir, settings_sha256),
                  HistoryCsv(writes_to.history, phase, epoch_offset),
                  keras.callbacks.TensorBoard(writes_to.logs(phase))]
  else:
    callbacks.append(backups.RestoreOnly(backup_dir))
  stopped_early = False
  if early_stopping_patience:
    callbacks.append(ResumableEarlyStopping(
        writes_to.early_stopping(phase), restore_from=paths.early_stopping(phase),
        monitor="val_loss", patience=early_stopping_patience))
    stopped_early = first_epoch > 0 and stopped_after(paths.early_stopping(phase)) == first_epoch
  return PhaseCallbacks(callbacks, steps, clock, first_epoch, stopped_early)


