"""The backup-file protocol: every pair a kill can leave behind is recognised."""

import json

import keras
import numpy as np

from trainers.runs import run_folder
from trainers.training import backups


def _model():
  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
  model.compile(optimizer="adam", loss="mse")
  return model


def test_backup_pairs_hold_the_hash_of_their_weights(tmp_path):
  backup_dir = str(tmp_path / "backup")
  model = _model()
  backup = backups.Backup(backup_dir)
  backup.set_model(model)
  x, y = np.ones((4, 2)), np.ones((4, 1))
  model.fit(x, y, epochs=2, verbose=0, callbacks=[backup])
  pairs = list(backups.restore_pairs(backup_dir))
  assert [epoch for _, _, epoch in pairs] == [2, 1]
  for weights, metadata, _ in pairs:
    assert json.loads(open(metadata).read())["weights_sha256"] == run_folder.sha256_of(
        weights)
  assert sorted(path.name for path in (tmp_path / "backup").iterdir()) == [
      "latest.weights.h5", "latest.weights.h5.bkp", "training_metadata.json",
      "training_metadata.json.bkp"]  # no temporary file left
  (tmp_path / "backup" / "latest.weights.h5").write_bytes(b"cut short")
  assert [epoch for _, _, epoch in backups.restore_pairs(backup_dir)] == [1]
