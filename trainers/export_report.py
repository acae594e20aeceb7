"""An export's report `<out>.json`: its figures, and the marker that makes it ours.

`trainers.export` writes it last, once the export passed its checks; an
existing --out is replaced only when its report shows an unchanged export of
ours. `trainers.predict --model=FILE.tflite` reads the size, crop and class
names from it, after checking the file is the one it describes.
"""

import json
import os

from trainers import run_folder


def report_path(out: str) -> str:
  """The report (and marker) of an export: `<out>.json` beside it."""
  return os.path.normpath(out) + ".json"


def check_out(out: str, export_format: str):
  """Raises ValueError unless `out` is free or holds an unchanged export of ours.

  Checked before any work: nothing at `out` is touched when it is refused.
  """
  if not os.path.lexists(out):
    return
  kind = "folder" if os.path.isdir(out) else "file"
  previous = read(out)
  if previous is None:
    raise ValueError(f"--out={out} is an existing {kind} that is not an export of ours (no "
                     f"report {report_path(out)} describes it): nothing was touched; choose "
                     "a new path, or move it away yourself.")
  if previous.get("format") != export_format:
    raise ValueError(f"--out={out} holds a {previous.get('format')} export, not "
                     f"{export_format}: nothing was touched; choose another --out.")
  if previous.get("content") != content(out):
    raise ValueError(f"--out={out} was changed since it was exported (its files differ from "
                     f"{report_path(out)}): nothing was touched; choose a new path, or move "
                     "it away yourself.")


def summary(report: dict) -> str:
  """The report in a few lines, as the export prints it."""
  name = report["format"] + ("" if report["quantize"] == "none" else
                             f" {report['quantize']} (input {report['io']})")
  lines = [f"{name} written to {report['path']} ({report['bytes']:,} bytes; report "
           f"{report_path(report['path'])})",
           f"  on {report['test_images']} test images: accuracy_test "
           f"{report['accuracy_test']:.4f}, Keras {report['keras_accuracy_test']:.4f} (drop "
           f"{report['accuracy_drop']:.4f}, allowed {report['max_accuracy_drop']:g}); top-1 "
           f"agreement {report['top1_agreement']:.4f}; max |probability difference| "
           f"{report['max_probability_difference']:.2e}"]
  latency = report["latency_ms"]
  if latency:
    lines.append(f"  ms per image, 1 thread / {latency['all_threads']} threads (median of "
                 f"{latency['runs']}): exported {latency['exported']['1_thread']:.2f} / "
                 f"{latency['exported']['all_threads']:.2f}, Keras "
                 f"{latency['keras']['1_thread']:.2f} / {latency['keras']['all_threads']:.2f}")
  return "\n".join(lines)


def content(path: str):
  """What an export holds: a file's SHA-256, or a folder's {relative path: SHA-256}."""
  if not os.path.isdir(path):
    return run_folder.sha256_of(path) if os.path.isfile(path) else None
  files = {}
  for folder, _, names in os.walk(path):
    for name in names:
      full = os.path.join(folder, name)
      files[os.path.relpath(full, path)] = run_folder.sha256_of(full)
  return dict(sorted(files.items()))


def bytes_of(path: str) -> int:
  if not os.path.isdir(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(folder, name))
             for folder, _, names in os.walk(path) for name in names)


def read(out: str):
  """The report of the export at `out`, or None when there is none or it is unreadable."""
  try:
    with open(report_path(out)) as file:
      report = json.load(file)
  except (OSError, ValueError):
    return None
  return report if isinstance(report, dict) else None


def tflite_report(path: str) -> dict:
  """The report of the TFLite export at `path`, checked to describe that very file.

  Raises:
    ValueError: one line, when the file or its report is missing, or they disagree.
  """
  if not os.path.isfile(path):
    raise ValueError(f"--model={path}: no such file; give a .tflite file written by "
                     "python -m trainers.export --format=tflite.")
  report = read(path)
  if report is None or report.get("format") != "tflite":
    raise ValueError(f"--model={path} has no TFLite export report {report_path(path)} beside "
                     "it (its image size, crop and class names are there): export it with "
                     "python -m trainers.export --format=tflite, or copy its report too.")
  if report.get("content") != content(path):
    raise ValueError(f"--model={path} is not the file its report {report_path(path)} "
                     "describes (SHA-256 differs): copy both again, or export it again.")
  return report
