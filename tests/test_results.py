"""What a finished run leaves behind, read and written again."""

import json

from trainers import metrics as metrics_lib
from trainers import train
import trainer_runs


def test_unreadable_metrics_json_is_an_unfinished_run_and_is_written_again(data_dir,
                                                                          tmp_path):
  first = train.train_and_evaluate(trainer_runs.small_config(data_dir, tmp_path / "run", epochs=1))
  (tmp_path / "run" / "metrics.json").write_text('{"accuracy_train": 0.5,\n "loss')
  again = train.train_and_evaluate(trainer_runs.small_config(data_dir, tmp_path / "run", epochs=1))
  assert metrics_lib.without_clock(again) == metrics_lib.without_clock(first)
  assert json.loads((tmp_path / "run" / "metrics.json").read_text())["accuracy_test"] == (
      first["accuracy_test"])
