"""tools.compare on hand-made run folders: statistics checked by hand and by SciPy."""

import json
import math

from PIL import Image
import pytest
from scipy import stats

from tools import compare
from trainers import config as config_lib

FILES = [f"cane/{index}.jpg" for index in range(40)]


def _run(folder, accuracy, correct, **settings):
  folder.mkdir(parents=True)
  seed = int(folder.name.split("_")[1]) if folder.name.startswith("seed_") else 0
  config_lib.save(config_lib.Config(model="cnn2", model_dir=str(folder), seed=seed, **settings))
  metrics = {column: accuracy for column in compare.COLUMNS}
  metrics["train_seconds"] = 100 * accuracy
  metrics["per_class"] = {label: {"precision": accuracy, "recall": accuracy,
                                  "f1-score": accuracy if label == "dog" else accuracy / 2,
                                  "support": 20} for label in ("dog", "cat")}
  (folder / "metrics.json").write_text(json.dumps(metrics))
  rows = ["file_name,label,prediction"] + [
      f"{name},dog,{'dog' if ok else 'cat'}" for name, ok in zip(FILES, correct)]
  (folder / "predictions.csv").write_text("\n".join(rows) + "\n")
  (folder / "history.csv").write_text("epoch,phase,val_accuracy\n0,train,0.2\n1,train,0.4\n")
  return str(folder)


def test_mean_std_and_mcnemar(tmp_path):
  good = [True] * 30 + [False] * 10
  worse = [True] * 20 + [False] * 20  # best right / other wrong on 10 files, never the reverse
  runs = [_run(tmp_path / "a" / "seed_0", .75, good), _run(tmp_path / "a" / "seed_1", .85, good),
          _run(tmp_path / "b" / "seed_0", .50, worse), _run(tmp_path / "b" / "seed_1", .60, worse)]
  table = compare.compare(runs, str(tmp_path / "out"))
  rows = {row["model"]: row for row in compare.summarize(compare.load(runs))}
  assert math.isclose(rows["a"]["accuracy_test"], .80)
  assert math.isclose(rows["a"]["accuracy_test_std"], math.sqrt(.005))  # sample std of .75,.85
  assert rows["a"]["mcnemar_p"] is None and rows["b"]["discordant"] == "20/0"
  expected = stats.binomtest(0, 20, .5).pvalue
  assert math.isclose(rows["b"]["mcnemar_p"], expected)
  assert "| a | 2 | 0.8000 ± 0.0707" in table and "best" in table
  assert "train_seconds" in table.splitlines()[0] and "| 80.0 ± 7.1 |" in table
  f1 = compare.per_class_f1(compare.load(runs))
  assert math.isclose(f1["a"]["dog"][0], .80) and math.isclose(f1["b"]["cat"][0], .275)
  assert math.isclose(f1["a"]["cat"][1], math.sqrt(.005) / 2)
  for name in ("comparison.png", "curves.png", "per_class_f1.png"):
    Image.open(tmp_path / "out" / name).verify()
  assert (tmp_path / "out" / "comparison.csv").read_text().startswith("model,seeds,")


def test_mcnemar_matches_scipy_on_uneven_counts():
  for first, second in ((3, 9), (12, 5), (0, 0), (7, 7)):
    expected = 1.0 if first + second == 0 else stats.binomtest(
        first, first + second, .5).pvalue
    assert math.isclose(compare.mcnemar_p(first, second), expected)


def test_unfinished_run_is_a_clear_error(tmp_path):
  (tmp_path / "half").mkdir()
  with pytest.raises(ValueError, match="not a finished run"):
    compare.load([str(tmp_path / "half")])


def test_two_runs_of_one_experiment_and_seed_are_refused(tmp_path):
  # /study/cached/mnv2/seed_0 and /study/plain/mnv2/seed_0: one silently replaced the other.
  runs = [_run(tmp_path / kind / "mnv2" / "seed_0", .5, [True] * 40)
          for kind in ("cached", "plain")]
  with pytest.raises(ValueError, match=r"are both experiment mnv2, seed 0"):
    compare.load(runs)


def test_seeds_of_one_experiment_must_share_every_other_setting(tmp_path):
  runs = [_run(tmp_path / "a" / "seed_0", .5, [True] * 40),
          _run(tmp_path / "a" / "seed_1", .5, [True] * 40, epochs=20, cache_features=False)]
  with pytest.raises(ValueError, match=r"the runs of a differ in more than the seed \(epochs:"):
    compare.load(runs)


def test_folders_are_searched_for_finished_runs_and_the_comparison_is_skipped(tmp_path):
  runs = [_run(tmp_path / "reproduce" / name / "seed_0", .5, [True] * 40)
          for name in ("model_01", "mnv2")]
  (tmp_path / "reproduce" / "comparison").mkdir()
  (tmp_path / "reproduce" / "comparison" / "metrics.json").write_text("{}")  # not a run
  (tmp_path / "reproduce" / "mnv2" / "seed_1").mkdir()  # killed: no metrics.json yet
  assert compare.find_runs([str(tmp_path / "reproduce")]) == sorted(runs)
  assert compare.find_runs([runs[0]]) == [runs[0]]
  for bad in (tmp_path / "empty", tmp_path / "missing"):
    if bad.name == "empty":
      bad.mkdir()
    try:
      compare.find_runs([str(bad)])
    except ValueError as error:
      assert str(bad) in str(error)
    else:
      raise AssertionError(f"expected a ValueError for {bad}")
