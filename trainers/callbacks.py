"""Callbacks whose state lives in the run folder, so a killed run resumes exactly."""

import csv
import hashlib
import io
import json
import os
import time

from typing import Iterator, Optional

import keras
import numpy as np

from trainers import run_folder


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
    run_folder.write_json(self.state_path, {
        "wait": self.wait, "best": None if self.best is None else float(self.best),
        "best_epoch": self.best_epoch})


class Backup(keras.callbacks.BackupAndRestore):
  """Keras's BackupAndRestore, with files that are never half-written or mismatched.

  After every epoch, the previous pair is copied to `.bkp` (Keras's double
  checkpoint), the weights are written under a temporary name and renamed to
  latest.weights.h5, and training_metadata.json is written last with the
  epoch and the SHA-256 of those weights. A kill or a full disk at any point
  leaves at least one pair whose metadata matches its weights: `restore_pairs`
  finds it. A full disk is found before the weights are written (h5py does not
  fail cleanly halfway) and stops the run with one line.
  """

  def __init__(self, backup_dir: str):
    super().__init__(backup_dir, delete_checkpoint=False, double_checkpoint=True)

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
                                     "weights_sha256": sha256_of(weights)})


def _weights_bytes(model: keras.Model, previous: str) -> int:
  """About how large a weights file of `model` (with its optimizer state) is."""
  if os.path.exists(previous):
    return os.path.getsize(previous)
  variables = list(model.weights)
  if model.optimizer is not None:
    variables += list(model.optimizer.variables)
  return sum(int(np.prod(variable.shape)) * np.dtype(variable.dtype).itemsize
             for variable in variables) + (64 << 10)


def sha256_of(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as file:
    for block in iter(lambda: file.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


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
    if "weights_sha256" in recorded and recorded["weights_sha256"] != sha256_of(pair[0]):
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
               images_per_step: int = 0, cached_features: bool = False):
    super().__init__()
    self.path, self.started = path, started
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
    run_folder.write_json(self.path, clock)
    return clock
