"""tools.compare on hand-made run folders: statistics checked by hand and by SciPy."""

import json
import math

from PIL import Image
import pytest
from scipy import stats

from tools import compare
from trainers import config as config_lib
from trainers.runs import settings as settings_lib
from trainers.evaluation import results

FILES = [f"cane/{index}.jpg" for index in range(40)]


def _run(folder, accuracy, correct, dataset="sample-1", **settings):
  folder.mkdir(parents=True)
  seed = int(folder.name.split("_")[1]) if folder.name.startswith("seed_") else 0
  settings_lib.save(config_lib.Config(model="cnn2", model_dir=str(folder), seed=seed, **settings))
  metrics = {column: accuracy for column in compare.COLUMNS}
  metrics.update(test_images=len(FILES), test_names_sha256=results.names_sha256(FILES),
                 dataset_fingerprint=dataset)
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
  settings_lib.save(config_lib.Config(model="mnv2", model_dir=str(tmp_path / "reproduce" / "mnv2"
                                                               / "seed_1")))
  assert compare.find_runs([str(tmp_path / "reproduce")]) == (
      sorted(runs), [str(tmp_path / "reproduce" / "mnv2" / "seed_1")])
  assert compare.find_runs([runs[0]]) == ([runs[0]], [])
  for bad in (tmp_path / "empty", tmp_path / "missing"):
    if bad.name == "empty":
      bad.mkdir()
    try:
      compare.find_runs([str(bad)])
    except ValueError as error:
      assert str(bad) in str(error)
    else:
      raise AssertionError(f"expected a ValueError for {bad}")


@pytest.mark.parametrize("damage, message", [
    ("one_row_removed", r"predictions.csv has 39 whole rows, but the run evaluated 40"),
    ("cut_mid_row", r"predictions.csv has \d+ whole rows, but the run evaluated 40"),
    ("header_only", r"predictions.csv has 0 whole rows, but the run evaluated 40"),
    ("row_renamed", r"predictions.csv does not name the test images the run evaluated"),
    ("predictions_missing", r"predictions.csv of a finished run is missing or unreadable"),
    ("history_missing", r"history.csv of a finished run is missing or unreadable"),
    ("metrics_list", r"metrics.json holds no test accuracy"),
    ("metrics_empty", r"metrics.json holds no test accuracy"),
])
def test_a_damaged_run_is_refused_in_one_line_naming_its_file(tmp_path, damage, message):
  good, worse = [True] * 30 + [False] * 10, [True] * 20 + [False] * 20
  runs = [_run(tmp_path / "a" / "seed_0", .75, good), _run(tmp_path / "b" / "seed_0", .5, worse)]
  folder = tmp_path / "b" / "seed_0"
  predictions = folder / "predictions.csv"
  rows = predictions.read_text().splitlines()
  if damage == "one_row_removed":  # a disagreeing row: McNemar's p moved from 1.0 to 0.774
    predictions.write_text("\n".join(rows[:30] + rows[31:]) + "\n")
  elif damage == "cut_mid_row":
    predictions.write_text(predictions.read_text()[:300])
  elif damage == "header_only":
    predictions.write_text(rows[0] + "\n")
  elif damage == "row_renamed":
    predictions.write_text("\n".join(rows).replace("cane/3.jpg", "cane/x.jpg") + "\n")
  elif damage.endswith("_missing"):
    (folder / f"{damage.split('_')[0]}.csv").unlink()
  else:
    (folder / "metrics.json").write_text("[]" if damage == "metrics_list" else "{}")
  with pytest.raises(ValueError, match=message) as error:
    compare.compare(runs)
  assert "\n" not in str(error.value) and "seed_0" in str(error.value)


def test_seeds_trained_on_different_data_are_not_averaged(tmp_path):
  runs = [_run(tmp_path / "cnn2" / "seed_0", .2, [True] * 40, dataset="sample-1"),
          _run(tmp_path / "cnn2" / "seed_1", .17, [True] * 40, dataset="sample-2")]
  with pytest.raises(ValueError, match=r"the runs of cnn2 differ in more than the seed "
                                       r"\(dataset_fingerprint:"):
    compare.load(runs)


def test_outputs_that_cannot_be_written_are_one_line(tmp_path):
  runs = [_run(tmp_path / "a" / "seed_0", .75, [True] * 40)]
  (tmp_path / "a_file").write_text("")
  with pytest.raises(ValueError, match=r"--out=.*a_file cannot be written"):
    compare.compare(runs, out=str(tmp_path / "a_file"))
  with pytest.raises(ValueError, match=r"--append_workspace=.*cannot be written .*a folder "
                                       r"that exists"):
    compare.compare(runs, append_workspace=str(tmp_path / "missing" / "WORKSPACE.md"))


def test_experiments_tested_on_different_images_pair_only_the_shared_ones(tmp_path):
  runs = [_run(tmp_path / "a" / "seed_0", .75, [True] * 30 + [False] * 10),
          _run(tmp_path / "b" / "seed_0", .5, [True] * 20 + [False] * 20)]
  global FILES  # pylint: disable=global-statement
  saved, FILES = FILES, FILES[:30]
  try:
    runs.append(_run(tmp_path / "c" / "seed_0", .4, [False] * 30))
  finally:
    FILES = saved
  rows = {row["model"]: row for row in compare.summarize(compare.load(runs))}
  assert rows["b"]["discordant"] == "10/0"
  assert rows["c"]["discordant"] == "30/0 on 30 shared test images"
