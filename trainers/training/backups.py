"""The backup-file protocol: a killed phase resumes from a pair of files that match.

A backup folder (`RunPaths.backup`) holds Keras's BackupAndRestore pair,
latest.weights.h5 and training_metadata.json, and the previous pair as `.bkp`
copies. `Backup` writes them so that at least one pair always matches;
`restored_epoch` finds it and puts it where Keras restores from.
"""

import json
import os
from typing import Iterator, Optional

import keras
import numpy as np

from trainers.runs import run_folder
from trainers.runs import run_paths


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
    # The run's `settings.settings_sha256`: shows whose backup this is when
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
                                     run_paths.SETTINGS_KEY: self.settings_sha256,
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
  weights = os.path.join(backup_dir, run_paths.BACKUP_WEIGHTS)
  metadata = os.path.join(backup_dir, run_paths.BACKUP_METADATA)
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


def restored_epoch(model, backup_dir: str, strategy) -> int:
  """The epoch to resume from: the one of the weights that are actually restored.

  The newest backup pair whose metadata matches its weights and whose weights
  load is put in place as latest.weights.h5 + training_metadata.json, so
  Keras's BackupAndRestore restores that same pair at the start of `fit`, and
  the data stream skips exactly its epochs. Weights without any metadata are
  from an epoch that never finished saving: they are set aside and the phase
  starts again. Metadata whose weights never load stops the run with one line.
  """
  weights = os.path.join(backup_dir, run_paths.BACKUP_WEIGHTS)
  metadata = os.path.join(backup_dir, run_paths.BACKUP_METADATA)
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
