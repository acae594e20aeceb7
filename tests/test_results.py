"""What a finished run leaves behind, read and written again."""

import json
import shutil

import pytest

from trainers.evaluation import results
from trainers.training import train
import trainer_runs


def test_unreadable_metrics_json_is_an_unfinished_run_and_is_written_again(data_dir,
                                                                          tmp_path):
  first = train.train_and_evaluate(trainer_runs.small_config(data_dir, tmp_path / "run", epochs=1))
  (tmp_path / "run" / "metrics.json").write_text('{"accuracy_train": 0.5,\n "loss')
  again = train.train_and_evaluate(trainer_runs.small_config(data_dir, tmp_path / "run", epochs=1))
  assert trainer_runs.without_clock(again) == trainer_runs.without_clock(first)
  assert json.loads((tmp_path / "run" / "metrics.json").read_text())["accuracy_test"] == (
      first["accuracy_test"])


def test_load_reads_a_finished_run_back_and_names_what_is_damaged(run_dir, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(run_dir, run)
  finished = results.load(str(run))
  assert finished.metrics["test_images"] == len(finished.predictions) > 0
  assert [row["epoch"] for row in finished.history] == ["0"]  # the fixture's one epoch
  assert set(finished.correct()) == {row["file_name"] for row in finished.predictions}
  rows = (run / "predictions.csv").read_text().splitlines()
  (run / "predictions.csv").write_text("\n".join(rows[:-1]) + "\n")  # one row cut
  with pytest.raises(ValueError, match=r"predictions.csv has .* whole rows.*delete .*metrics"):
    results.load(str(run))
  (run / "history.csv").unlink()
  with pytest.raises(ValueError, match=r"history.csv of a finished run is missing"):
    results.load(str(run))
  (run / "metrics.json").write_text("{")
  with pytest.raises(ValueError, match=r"metrics.json is unreadable .*python -m trainers.main"):
    results.load(str(run))
