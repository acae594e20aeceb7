"""Callbacks whose state lives in the run folder: they resume exactly after a kill."""

import json
import time

import keras

from trainers.training import callbacks as callbacks_lib
from trainers.runs import history as history_lib


def test_history_rows_of_epochs_run_again_replace_the_old_ones(tmp_path):
  path = str(tmp_path / "history.csv")
  callback = callbacks_lib.HistoryCsv(path, "train")
  for epoch in range(3):
    callback.on_epoch_end(epoch, {"loss": 3.0 - epoch})
  resumed = callbacks_lib.HistoryCsv(path, "train")  # killed after epoch 1 was written
  resumed.on_epoch_end(1, {"loss": 9.0})
  rows = history_lib.read(path)
  assert [(row["epoch"], row["loss"]) for row in rows] == [("0", "3.0"), ("1", "9.0")]
  fine_tune = callbacks_lib.HistoryCsv(path, "fine_tune", epoch_offset=2)
  fine_tune.on_epoch_end(0, {"loss": 1.0, "val_loss": 2.0})
  rows = history_lib.read(path)
  assert rows[-1] == {"epoch": "2", "phase": "fine_tune", "loss": "1.0", "val_loss": "2.0"}


def test_early_stopping_counts_survive_a_restart(tmp_path):
  state = str(tmp_path / "early_stopping.json")
  model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
  first = callbacks_lib.ResumableEarlyStopping(state, monitor="val_loss", patience=3)
  first.set_model(model)
  first.on_train_begin()
  for epoch, loss in enumerate((1.0, 0.5, 0.7, 0.8)):
    first.on_epoch_end(epoch, {"val_loss": loss})
  assert json.loads(open(state).read()) == {"wait": 2, "best": 0.5, "best_epoch": 1,
                                            "epochs_done": 4, "stopped": False}
  assert callbacks_lib.stopped_after(state) is None
  second = callbacks_lib.ResumableEarlyStopping(state, monitor="val_loss", patience=3)
  second.set_model(model)
  second.on_train_begin()
  second.on_epoch_end(4, {"val_loss": 0.9})
  assert model.stop_training  # 3 epochs without gain, counted across the restart
  assert callbacks_lib.stopped_after(state) == 5  # a resume from epoch 5 stays stopped


def test_phase_clock_adds_a_resumed_process_s_time_to_the_saved_one(tmp_path):
  path = str(tmp_path / "train.clock.json")
  clock = callbacks_lib.PhaseClock(path, started=time.time() - 5, images_per_step=16)
  clock.on_train_batch_end(0)
  clock.on_train_batch_end(1)
  clock.on_epoch_end(0)
  saved = json.loads(open(path).read())
  assert saved["images"] == 32 and 5 <= saved["seconds"] < 60
  resumed = callbacks_lib.PhaseClock(path, started=time.time() - 2, images_per_step=16)
  resumed.on_train_batch_end(0)
  total = resumed.finish(steps=3)
  assert total["images"] == 48 and total["steps"] == 3
  assert saved["seconds"] + 2 <= total["seconds"] < saved["seconds"] + 60
