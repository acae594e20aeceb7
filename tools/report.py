r"""The whole study as one self-contained HTML page: data, comparison, one section per
experiment, the audit and the exports, and where every figure came from.

    python -m tools.report --runs=work/runs/study [--eda=work/eda] [--audit=work/audit] \
        --out=work/runs/study/report.html

The page reads offline and can be mailed: no script, no stylesheet, font or image
from elsewhere; every picture is embedded (downscaled: the page of an 8-experiment,
3-seed study stays well under 10 MB). In the study's order:

- the data: dataset and settings, counts per split and class, duplicates,
  near-duplicate groups and skipped files (the build's metadata.json), and the
  EDA plots with --eda;
- the comparison: the study's 8 metric columns as mean ± std over seeds, McNemar
  against the best with its discordant counts, seconds per run, test images; the
  study's rows that were not run are named, with the reason when it is known;
- one section per experiment: its flags, learning curves (mean and band over
  seeds), confusion matrix, per-class F1, the most confident errors, Grad-CAM
  overlays where a run has an `explain/` folder;
- the audit's counts and sheets with --audit; every export found beside a run;
- provenance: each run's command, precision, the dataset fingerprint, dates, and
  the versions and commit the page was made with.
"""

import base64
import dataclasses
import datetime
import html
import io
import json
import math
import os
import subprocess
import sys

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from tools import compare
from trainers import experiments as experiments_lib
from trainers.evaluation import figures
from trainers.evaluation import metrics as metrics_lib
from trainers.runs import run_folder
from trainers.runs import run_paths

_FLAGS = flags.FLAGS
# The study's rows, in its order (trainers/experiments/<name>.flags).
STUDY = ("model_01", "model_02", "model_03", "model_04", "mnv2", "mnv2_fine_tune", "enb3",
         "dn121")
# Longest side of an embedded picture: errors.png and the sheets are large.
MAX_SIDE = 900
# Written into every report: an existing --out is replaced only when it carries it.
MARKER = '<meta name="generator" content="animals10 tools.report">'
STYLE = """
body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}
th,td{border:1px solid #bbb;padding:3px 6px;text-align:right}
th:first-child,td:first-child{text-align:left}
img{max-width:100%;height:auto;display:block;margin:.5em 0}
pre{background:#f4f4f4;padding:.5em;overflow-x:auto;font-size:12px}
.notrun td{color:#888;font-style:italic}
"""


def _image(data: bytes, alt: str, max_side: int = MAX_SIDE) -> str:
  """An <img> of encoded image bytes, downscaled to `max_side` and embedded."""
  image = Image.open(io.BytesIO(data))
  image.load()
  if max(image.size) > max_side:
    scale = max_side / max(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)),
                         Image.Resampling.LANCZOS)
  buffer = io.BytesIO()
  if image.mode in ("RGBA", "P", "LA"):
    image = image.convert("RGB")
  image.save(buffer, "JPEG", quality=82)
  encoded = base64.b64encode(buffer.getvalue()).decode()
  return f'<img alt="{html.escape(alt)}" src="data:image/jpeg;base64,{encoded}">'


def _image_file(path: str, alt: str) -> str:
  with open(path, "rb") as file:
    return _image(file.read(), alt)


def _table(header: list, rows: list, row_class: dict = None) -> str:
  """An HTML table of already-formatted cells (escaped here)."""
  row_class = row_class or {}
  lines = ["<table><tr>" + "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
           + "</tr>"]
  for index, row in enumerate(rows):
    css = f' class="{row_class[index]}"' if index in row_class else ""
    lines.append(f"<tr{css}>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row)
                 + "</tr>")
  return "\n".join(lines + ["</table>"])


def _mean_std(row: dict, column: str, digits: int) -> str:
  """`compare.summarize`'s mean ± std of a column (the mean alone for one seed)."""
  if math.isnan(row[column]):
    return ""
  if row["seeds"] < 2:
    return f"{row[column]:.{digits}f}"
  return f"{row[column]:.{digits}f} ± {row[column + '_std']:.{digits}f}"


def data_section(experiments: dict, eda_dir: str = None) -> str:
  """The dataset, its counts per split and class, and what its build set aside."""
  settings = {}  # each distinct data setting, with the experiments that use it
  for name, seeds in experiments.items():
    for run in seeds.values():
      config = run["config"]
      key = (config.dataset, config.data_dir or "TFDS default", config.image_size,
             ", ".join(config.keep_formats + config.keep_modes) or "none", config.balance)
      settings.setdefault(key, {})[name] = None
  # The dataset's counts: the first run's build.
  config = next(iter(next(iter(experiments.values())).values()))["config"]
  parts = ["<h2>The data</h2>",
           _table(["dataset", "data_dir", "image size", "filters", "balance", "experiments"],
                  [list(key) + [", ".join(names)] for key, names in settings.items()])]
  metadata = _metadata(config)
  if metadata is None:
    parts.append("<p>metadata.json of the build was not found beside its records.</p>")
  else:
    counts = metadata["split_counts"]
    classes = sorted({name for split in counts.values() for name in split})
    parts.append(_table(["class"] + list(counts), [
        [name] + [counts[split].get(name, 0) for split in counts] for name in classes] + [
        ["all"] + [sum(counts[split].values()) for split in counts]]))
    skipped = metadata.get("skipped", [])
    parts.append(f"<p>{len(metadata.get('duplicates', []))} duplicate files stored once; "
                 f"{metadata.get('near_duplicate_groups', 0)} near-duplicate groups (each kept "
                 f"within one split); {len(skipped)} files skipped.</p>")
    if skipped:
      parts.append("<pre>" + html.escape("\n".join(
          f"{item.get('path', item)}: {item.get('reason', '')}" if isinstance(item, dict)
          else str(item) for item in skipped[:50])) + "</pre>")
  if eda_dir:
    parts.append("<h3>Data analysis</h3>")
    for name in sorted(os.listdir(eda_dir)):
      if name.endswith(".png"):
        parts.append(_image_file(os.path.join(eda_dir, name), name))
  return "\n".join(parts)


def _metadata(config) -> dict:
  """The build's metadata.json for the run's dataset, or None when it is not there."""
  from trainers.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  try:
    path = os.path.join(dataset_lib.builder(config.dataset, config.data_dir).data_dir,
                        "metadata.json")
    with open(path) as file:
      return json.load(file)
  except (OSError, ValueError):
    return None


def comparison_section(experiments: dict, rows: list) -> str:
  """The study's table: mean ± std over seeds, McNemar against the best, the rows not run."""
  header = (["experiment", "seeds"] + list(metrics_lib.STUDY_COLUMNS)
            + ["McNemar vs best (discordant)", "seconds per run", "test images"])
  table, classes = [], {}
  for row in rows:
    seeds = experiments[row["model"]]
    cells = [row["model"], row["seeds"]]
    for column in metrics_lib.STUDY_COLUMNS:
      cells.append(_mean_std(row, column, 3))
    cells.append("best" if row["mcnemar_p"] is None else
                 f"p = {row['mcnemar_p']:.2g} ({row['discordant']})")
    cells.append(_mean_std(row, "train_seconds", 0))
    cells.append(" / ".join(sorted({str(run["metrics"]["test_images"])
                                    for run in seeds.values()})))
    table.append(cells)
  for name in STUDY:
    if name not in experiments:
      classes[len(table)] = "notrun"
      table.append([name, 0] + [f"not run: {_why_not_run(name)}"] + [""] * (len(header) - 3))
  return "<h2>The comparison</h2>\n" + _table(header, table, classes)


def _why_not_run(experiment: str) -> str:
  """Why a study row has no runs, when the machine shows it: its weights are missing."""
  from trainers.modeling import models  # pylint: disable=g-import-not-at-top
  from trainers.modeling import weights as weights_lib  # pylint: disable=g-import-not-at-top
  try:
    values = experiments_lib.values(experiment)
    spec = models.REGISTRY[values["model"]]
    if spec.imagenet_file is not None and values.get("weights") == "imagenet":
      cached = os.path.join(weights_lib.keras_models_folder(),
                            spec.imagenet_file(int(values.get("image_size", 100))))
      if not os.path.exists(cached):
        return "no ImageNet weights on this machine"
  except (OSError, KeyError, ValueError):
    pass
  return "not in this study's runs"


def _flags(run: dict) -> str:
  """The run's flags.txt; for a run trained from Python (no flags.txt), the settings of
  its config.json that differ from the defaults, as flags."""
  paths = run_paths.RunPaths(run["dir"])
  if os.path.exists(paths.flags):
    with open(paths.flags) as file:
      return file.read()
  config = run["config"]
  defaults = {field.name: field.default for field in dataclasses.fields(config)}
  return "\n".join(f"--{name}={value}" for name, value in dataclasses.asdict(config).items()
                   if value != defaults.get(name) and name not in ("exclude",)) + "\n"


def curves_png(seeds: dict) -> bytes:
  """Accuracy and loss, train and validation, per epoch: mean over seeds with a band."""
  pyplot = figures.pyplot()
  figure, axes = pyplot.subplots(1, 2, figsize=(9, 3.2))
  for axis, metric in zip(axes, ("accuracy", "loss")):
    for key, style in ((metric, "-"), ("val_" + metric, "--")):
      series = [[float(row[key]) for row in run["run"].history if row.get(key)]
                for run in seeds.values()]
      length = min((len(values) for values in series), default=0)
      if not length:
        continue
      values = np.array([values[:length] for values in series])
      mean, low, high = values.mean(0), values.min(0), values.max(0)
      axis.plot(range(length), mean, style, label=key)
      axis.fill_between(range(length), low, high, alpha=0.2)
    axis.set_xlabel("epoch")
    axis.set_title(metric)
    axis.legend(fontsize=7)
  figure.tight_layout()
  return figures.png_bytes(figure, dpi=80)


def experiment_section(name: str, seeds: dict) -> str:
  """One experiment: its flags, curves, confusion matrix, per-class F1, errors, Grad-CAM."""
  first = seeds[sorted(seeds)[0]]
  paths = run_paths.RunPaths(first["dir"])
  parts = [f'<h2 id="{html.escape(name)}">{html.escape(name)}</h2>']
  parts.append("<pre>" + html.escape(_flags(first)) + "</pre>")
  parts.append(_image(curves_png(seeds), f"{name}: learning curves"))
  for picture, what in (("confusion.png", "confusion matrix"), ("per_class.png", "per-class F1"),
                        ("errors.png", "most confident errors")):
    if os.path.exists(paths.figure(picture)):
      parts.append(f"<h3>{what} ({sorted(seeds)[0].replace('_', ' ')})</h3>")
      parts.append(_image_file(paths.figure(picture), f"{name}: {what}"))
  explained = os.path.join(first["dir"], "explain")
  if os.path.isdir(explained):
    parts.append("<h3>Grad-CAM</h3>")
    parts += [_image_file(os.path.join(explained, picture), picture)
              for picture in sorted(os.listdir(explained))[:12] if picture.endswith(".png")]
  return "\n".join(parts)


def audit_section(audit_dir: str) -> str:
  """The audit's summary and its contact sheets."""
  parts = ["<h2>The data audit</h2>"]
  summary = os.path.join(audit_dir, "audit.md")
  if os.path.exists(summary):
    with open(summary) as file:
      parts.append("<pre>" + html.escape(file.read()) + "</pre>")
  for picture in sorted(os.listdir(audit_dir)):
    if picture.endswith((".png", ".jpg")):
      parts.append(_image_file(os.path.join(audit_dir, picture), picture))
  return "\n".join(parts)


def exports_section(experiments: dict) -> str:
  """Every export report (`<export>.json`) found in the runs' export folders."""
  rows = []
  for name, seeds in experiments.items():
    for seed, run in sorted(seeds.items()):
      folder = os.path.dirname(run_paths.RunPaths(run["dir"]).export("tflite"))
      if not os.path.isdir(folder):
        continue
      for file_name in sorted(os.listdir(folder)):
        if not file_name.endswith(".json"):
          continue
        try:
          with open(os.path.join(folder, file_name)) as file:
            report = json.load(file)
          latency = report.get("latency_ms") or {}
          rows.append([f"{name} {seed}", f"{report['format']} {report['quantize']}",
                       f"{report['bytes']:,}", f"{report['accuracy_test']:.4f}",
                       f"{report['accuracy_drop']:+.4f}",
                       f"{latency['exported']['1_thread']:.2f} ms" if latency else ""])
        except (OSError, ValueError, KeyError, TypeError):
          continue
  if not rows:
    return ""
  return "<h2>Exports</h2>\n" + _table(
      ["run", "format", "bytes", "accuracy_test", "drop", "latency (1 thread)"], rows)


def provenance_section(experiments: dict) -> str:
  """Each run's command and conditions, and what the page was made with."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rows = []
  for name, seeds in experiments.items():
    for seed, run in sorted(seeds.items()):
      metrics = run["metrics"]
      finished = datetime.datetime.fromtimestamp(
          os.path.getmtime(run_paths.RunPaths(run["dir"]).metrics), datetime.timezone.utc)
      rows.append([f"{name} {seed}", metrics.get("precision", "float32 (before it was "
                                                 "recorded)"), run["config"].strategy,
                   str(metrics.get("dataset_fingerprint", ""))[:16],
                   finished.strftime("%Y-%m-%d %H:%M UTC"),
                   f"python -m trainers.main --flagfile={run_paths.RunPaths(run['dir']).flags}"])
  made = (f"Made {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} with "
          f"TensorFlow {tf.__version__}, Keras {keras.version()}, animals10 "
          f"{_version()}{_commit()}.")
  return ("<h2>Provenance</h2>\n" + _table(
      ["run", "precision", "strategy", "dataset fingerprint", "finished", "command"], rows)
          + f"\n<p>{html.escape(made)}</p>")


def _version() -> str:
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  try:
    return metadata.version("animals10")
  except metadata.PackageNotFoundError:
    return "(not installed)"


def _commit() -> str:
  """`, commit <sha>` of the checkout the tools run from, when it is one."""
  try:
    sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.abspath(__file__)),
                         timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return ""
  return f", commit {sha[:12]}" if sha else ""


def build(runs_dir: str, eda_dir: str = None, audit_dir: str = None) -> str:
  """The report's HTML.

  Raises:
    ValueError: one line, for a folder without finished runs, a damaged run, or
      runs of one experiment with other settings (as `tools.compare` says it).
  """
  run_dirs, _ = compare.find_runs([runs_dir])
  experiments = compare.load(run_dirs)
  rows = compare.summarize(experiments)
  order = [name for name in STUDY if name in experiments] + sorted(
      name for name in experiments if name not in STUDY)
  rows.sort(key=lambda row: order.index(row["model"]))
  body = [f"<h1>Animals-10 study: {html.escape(os.path.basename(os.path.abspath(runs_dir)))}"
          "</h1>",
          "<p>" + " · ".join(f'<a href="#{html.escape(name)}">{html.escape(name)}</a>'
                             for name in order) + "</p>",
          data_section(experiments, eda_dir), comparison_section(experiments, rows)]
  body += [experiment_section(name, experiments[name]) for name in order]
  if audit_dir:
    body.append(audit_section(audit_dir))
  body += [exports_section(experiments), provenance_section(experiments)]
  return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
          f"{MARKER}<title>Animals-10 study</title><style>{STYLE}</style></head><body>\n"
          + "\n".join(part for part in body if part) + "\n</body></html>\n")


def write(runs_dir: str, out: str, eda_dir: str = None, audit_dir: str = None) -> int:
  """Writes the report (atomically); returns its size in bytes.

  Raises:
    ValueError: one line, for an --eda or --audit that is not a folder, or an --out
      that holds anything but a report of ours (it is left as it is).
  """
  for flag, folder in (("--eda", eda_dir), ("--audit", audit_dir)):
    if folder and not os.path.isdir(folder):
      raise ValueError(f"{flag}={folder} is not a folder: give the --out folder of "
                       f"tools.{flag[2:]}.")
  check_out(out)
  page = build(runs_dir, eda_dir, audit_dir).encode()
  try:
    run_folder.atomic_write(out, page)
  except OSError as error:
    raise ValueError(f"--out={out} cannot be written ({error.strerror or error}): choose a "
                     "folder you can write to.") from None
  return len(page)


def check_out(out: str):
  """Raises ValueError unless `out` is free or a report this tool wrote."""
  if not os.path.lexists(out):
    return
  try:
    with open(out, encoding="utf-8", errors="replace") as file:
      ours = MARKER in file.read(4096)
  except OSError:
    ours = False
  if not ours:
    raise ValueError(f"--out={out} exists and is not a report of tools.report: it is left "
                     "as it is; choose another --out.")


def _define_flags():
  flags.DEFINE_string("runs", None, "A folder of finished runs (tools.reproduce's --out).",
                      required=True)
  flags.DEFINE_string("eda", None, "tools.eda's --out folder: its plots go in the data part.")
  flags.DEFINE_string("audit", None, "tools.audit's --out folder: its counts and sheets.")
  flags.DEFINE_string("out", None, "The HTML file to write.", required=True)


def main(argv):
  from trainers import cli  # pylint: disable=g-import-not-at-top
  cli.no_arguments(argv)
  cli.quiet_logs()
  try:
    size = write(_FLAGS.runs, _FLAGS.out, _FLAGS.eda, _FLAGS.audit)
  except ValueError as error:
    sys.exit(f"report: {error}")
  print(f"report: {_FLAGS.out} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  _define_flags()
  app.run(main)
