r"""Compares finished runs: the study's table, seed statistics and McNemar tests.

Writes comparison.md/.csv, comparison.png, curves.png and per_class_f1.png (the
per-class test F1 of every experiment side by side: where the gap between two
models comes from).

    python -m tools.compare runs/model_01/seed_0 runs/model_01/seed_1 runs/mnv2/seed_0 ...
        [--out=runs/comparison] [--append_workspace=WORKSPACE.md]
    python -m tools.compare work/runs/reproduce     # every finished run below it

Runs are grouped by experiment: the folder name, or its parent's when the folder is
`seed_<n>` (what tools.reproduce writes). Each column becomes mean ± standard
deviation over seeds. Each experiment is tested against the best one (highest mean
test accuracy) with an exact McNemar test on the same test images, pairing runs of
the same seed, so a reader can tell a real difference from seed noise.
"""

import collections
import csv
import dataclasses
import io
import math
import os
import re
import sys

from absl import app
from absl import flags

from trainers.runs import settings as settings_lib
from trainers.evaluation import figures
from trainers.evaluation import metrics as metrics_lib
from trainers.evaluation import results
from trainers.runs import run_folder
from trainers.runs import run_paths

COLUMNS = metrics_lib.STUDY_COLUMNS + ("train_seconds",)
# What the data of a run was: seeds of one experiment must agree on both (where
# the data lives may differ: `settings.SAME_EXPERIMENT_EXCEPT`).
DATA_IDENTITY = ("dataset_fingerprint", "test_names_sha256")

# tools.compare's own output folder when tools.reproduce calls it.
COMPARISON_DIR = "comparison"

_FLAGS = flags.FLAGS


def experiment_of(run_dir: str) -> tuple[str, str]:
  """(experiment name, seed label) of a run folder.

  The experiment is the folder's name, or its parent's for `seed_<n>` folders
  (what tools.reproduce writes); the seed is the one in its config.json.
  """
  path = os.path.normpath(run_dir)
  name = os.path.basename(path)
  if re.fullmatch(r"seed_\d+", name):
    name = os.path.basename(os.path.dirname(path))
  return name, f"seed_{settings_lib.load(run_dir).seed}"


def mcnemar_p(only_first: int, only_second: int) -> float:
  """Exact two-sided McNemar p-value from the two discordant counts."""
  discordant = only_first + only_second
  if discordant == 0:
    return 1.0
  tail = sum(math.comb(discordant, k) for k in range(min(only_first, only_second) + 1))
  return min(1.0, 2 * tail / 2 ** discordant)


def find_runs(paths) -> tuple[list[str], list[str]]:
  """The finished runs named or under the folders named, as TensorBoard finds logdirs.

  A folder with a metrics.json is a run; any other folder is searched
  recursively (sorted, skipping hidden folders and our own `comparison/` output).
  A folder below with a config.json but no metrics.json is an unfinished run.

  Returns:
    (finished run folders, unfinished run folders found on the way).

  Raises:
    ValueError: a path that is neither a run nor holds one.
  """
  runs, unfinished = [], []
  for path in paths:
    if os.path.exists(run_paths.RunPaths(path).metrics):
      runs.append(path)
      continue
    if not os.path.isdir(path):
      raise ValueError(f"{path} is not a finished run (no metrics.json) nor a folder of runs.")
    found = []
    for root, dirs, files in os.walk(path):
      dirs[:] = sorted(name for name in dirs
                       if not name.startswith(".") and name != COMPARISON_DIR)
      layout = run_paths.RunPaths(root)
      if os.path.basename(layout.metrics) in files:
        found.append(root)
        dirs[:] = []  # a run's own subfolders (logs, backup) hold no runs
      elif os.path.basename(layout.config) in files:
        unfinished.append(root)
        dirs[:] = []
    if not found:
      raise ValueError(f"{path} holds no finished run (no metrics.json below it): train one "
                       "with python -m trainers.main or tools.reproduce.")
    runs += found
  return runs, unfinished


def load(run_dirs) -> dict:
  """{experiment: {seed: {"dir": path, "metrics": {...}, "run": FinishedRun,
  "config": its settings (config.json)}}}.

  Raises:
    ValueError: an unfinished or damaged run (`results.load`), two runs of one
      experiment and seed, or seeds of one experiment with other settings or data.
  """
  experiments = collections.defaultdict(dict)
  for run_dir in run_dirs:
    run = results.load(run_dir)
    name, seed = experiment_of(run_dir)
    if seed in experiments[name]:
      raise ValueError(f"{experiments[name][seed]['dir']} and {run_dir} are both experiment "
                       f"{name}, {seed.replace('_', ' ')}: compare them in separate calls, or "
                       "rename one folder.")
    experiments[name][seed] = {"dir": run_dir, "metrics": run.metrics, "run": run,
                               "config": settings_lib.load(run_dir)}
    _check_same_settings(name, experiments[name])
  return dict(experiments)


def _check_same_settings(name: str, seeds: dict):
  """Raises ValueError when the runs of one experiment differ in more than the seed:
  in a setting, or in the data they trained and were tested on."""
  settings = {seed: {key: value for key, value in
                     dataclasses.asdict(run["config"]).items()
                     if key not in settings_lib.SAME_EXPERIMENT_EXCEPT}
              for seed, run in seeds.items()}
  first_seed, first = next(iter(settings.items()))
  for seed, other in settings.items():
    changed = [key for key in first if first[key] != other[key]]
    changed += [key for key in DATA_IDENTITY if seeds[first_seed]["metrics"].get(key)
                != seeds[seed]["metrics"].get(key)]
    if changed:
      raise ValueError(
          f"the runs of {name} differ in more than the seed ({', '.join(changed)}: "
          f"{seeds[first_seed]['dir']} vs {seeds[seed]['dir']}): give them different folder "
          "names to compare them as two experiments.")


def summarize(experiments: dict) -> list[dict]:
  """One row per experiment: mean and std of each column, McNemar vs the best."""
  rows = []
  for name, seeds in experiments.items():
    row = {"model": name, "seeds": len(seeds)}
    for column in COLUMNS:
      values = [run["metrics"][column] for run in seeds.values()
                if run["metrics"].get(column) is not None]
      mean = sum(values) / len(values) if values else float("nan")
      std = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
             if len(values) > 1 else 0.0)
      row[column], row[column + "_std"] = mean, std
    rows.append(row)
  best = max(rows, key=lambda row: row["accuracy_test"])
  for row in rows:
    only_best = only_other = paired = 0
    partial = False
    for seed, run in experiments[row["model"]].items():
      partner = experiments[best["model"]].get(seed)
      if partner is None or row is best:
        continue
      ours, theirs = run["run"].correct(), partner["run"].correct()
      shared = ours.keys() & theirs.keys()
      # Other filters or balancing (model_01 against model_02): the test pairs
      # the images both were tested on, and the table says how many.
      partial |= len(shared) != max(len(ours), len(theirs))
      paired += len(shared)
      for file_name in shared:
        only_best += theirs[file_name] and not ours[file_name]
        only_other += ours[file_name] and not theirs[file_name]
    row["vs_best"] = best["model"]
    row["mcnemar_p"] = None if row is best else mcnemar_p(only_best, only_other)
    row["discordant"] = (f"{only_best}/{only_other}" +
                         (f" on {paired} shared test images" if partial else ""))
  return rows


def markdown(rows) -> str:
  header = ["model", "seeds"] + list(COLUMNS) + ["McNemar p vs best"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    cells = [row["model"], str(row["seeds"])]
    for column in COLUMNS:
      digits = 1 if column == "train_seconds" else 4
      cells.append(f"{row[column]:.{digits}f}" + (f" ± {row[column + '_std']:.{digits}f}"
                                                  if row["seeds"] > 1 else ""))
    cells.append("best" if row["mcnemar_p"] is None else
                 f"{row['mcnemar_p']:.3g} ({row['discordant']})")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write_csv(rows, path):
  fields = ["model", "seeds"] + [f for c in COLUMNS for f in (c, c + "_std")] + [
      "vs_best", "mcnemar_p", "discordant"]
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
  writer.writeheader()
  writer.writerows(rows)
  run_folder.atomic_write(path, buffer.getvalue().encode())


def charts(rows, experiments, out):
  """comparison.png (accuracy and F1 with error bars) and curves.png (history)."""
  pyplot = figures.pyplot()
  names = [row["model"] for row in rows]
  positions = range(len(rows))
  figure, axes = pyplot.subplots(figsize=(max(5, 1.2 * len(rows)), 4))
  for offset, column in ((-.2, "accuracy_test"), (.2, "f1-score_test")):
    axes.bar([p + offset for p in positions], [row[column] for row in rows], width=.4,
             yerr=[row[column + "_std"] for row in rows], capsize=3, label=column)
  axes.set_xticks(list(positions), names, rotation=30, ha="right")
  axes.set_ylim(0, 1)
  axes.legend()
  axes.set_title("Test accuracy and weighted F1 (mean ± std over seeds)")
  figure.tight_layout()
  figures.save(figure, os.path.join(out, "comparison.png"), dpi=90)
  per_class_f1_png(experiments, os.path.join(out, "per_class_f1.png"))
  figure, axes = pyplot.subplots(figsize=(7, 4))
  for name, seeds in experiments.items():
    history = seeds[sorted(seeds)[0]]["run"].history
    axes.plot([int(r["epoch"]) for r in history], [float(r["val_accuracy"]) for r in history],
              label=name)
  axes.set_xlabel("epoch")
  axes.set_ylabel("val_accuracy")
  axes.legend(fontsize=7)
  figure.tight_layout()
  figures.save(figure, os.path.join(out, "curves.png"), dpi=90)


def per_class_f1(experiments: dict) -> dict:
  """{experiment: {class: (mean F1, std F1 over seeds)}} from metrics.json's per_class."""
  table = {}
  for name, seeds in experiments.items():
    runs = [run["metrics"].get("per_class", {}) for run in seeds.values()]
    classes = [label for label in runs[0]] if runs else []
    table[name] = {}
    for label in classes:
      values = [run[label]["f1-score"] for run in runs if label in run]
      mean = sum(values) / len(values)
      std = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
             if len(values) > 1 else 0.0)
      table[name][label] = (mean, std)
  return table


def per_class_f1_png(experiments: dict, path: str):
  """Per-class test F1 of every experiment side by side (mean ± std over seeds)."""
  pyplot = figures.pyplot()
  table = per_class_f1(experiments)
  classes = next((list(row) for row in table.values() if row), [])
  width = 0.8 / max(1, len(table))
  figure, axes = pyplot.subplots(figsize=(max(8, 0.9 * len(classes)), 4))
  for position, (name, row) in enumerate(table.items()):
    offsets = [index - 0.4 + width * (position + 0.5) for index in range(len(classes))]
    axes.bar(offsets, [row.get(label, (0, 0))[0] for label in classes], width=width,
             yerr=[row.get(label, (0, 0))[1] for label in classes], capsize=2, label=name)
  axes.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
  axes.set_ylim(0, 1)
  axes.set_ylabel("test F1")
  axes.set_title("Per-class F1 (mean ± std over seeds)")
  axes.legend(fontsize=7)
  figure.tight_layout()
  figures.save(figure, path, dpi=90)


def compare(run_dirs, out=None, append_workspace=None) -> str:
  """Loads, summarizes and writes everything; returns the Markdown table."""
  experiments = load(run_dirs)
  rows = summarize(experiments)
  table = markdown(rows)
  if out:
    try:
      os.makedirs(out, exist_ok=True)
      run_folder.atomic_write(os.path.join(out, "comparison.md"), table.encode())
      write_csv(rows, os.path.join(out, "comparison.csv"))
      charts(rows, experiments, out)
    except OSError as error:
      raise ValueError(f"--out={out} cannot be written ({error.strerror or error}): choose a "
                       "folder you can write to.") from None
  if append_workspace:
    try:
      with open(append_workspace, "a") as file:
        file.write("\n### Comparison of " + ", ".join(sorted(experiments)) + "\n\n" + table)
    except OSError as error:
      raise ValueError(f"--append_workspace={append_workspace} cannot be written "
                       f"({error.strerror or error}): give a file in a folder that "
                       "exists.") from None
  return table


def _define_flags():
  flags.DEFINE_string("out", None, "Folder for comparison.md/.csv and the PNG charts.")
  flags.DEFINE_string("append_workspace", None, "Append the table to this results log.")


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("Give one or more run folders, or folders that hold runs.")
  try:
    runs, unfinished = find_runs(argv[1:])
    print(f"compare: {len(runs)} finished run(s) found" + (
        f"; skipped {len(unfinished)} unfinished: {', '.join(unfinished)}" if unfinished
        else ""))
    print(compare(runs, _FLAGS.out, _FLAGS.append_workspace), end="")
  except ValueError as error:
    sys.exit(f"compare: {error}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
