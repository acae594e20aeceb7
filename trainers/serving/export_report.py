"""An export's report `<out>.json`: its figures, and the marker that makes it ours.

`trainers.export` writes it last, once the export passed its checks; an
existing --out is replaced only when its report shows an unchanged export of
ours, and a `<out>.json` that is not a report of ours (a run's metrics.json, a
user's notes) is never written over. `trainers.predict --model=FILE.tflite`
reads the size, crop and class names from it, after checking the file is the
one it describes.

The report checks itself: `report_sha256` is the SHA-256 of the rest of it, so a
hand-edited report (another crop, another size) is refused, never used.

Placing an export is two renames: the export to `out`, then its report (kept
until then in the export's scratch folder beside `out`) to `<out>.json`. A kill
between the two leaves the new export with the old report, or none; `recover`
recognises that by the report waiting in our scratch folder and finishes the
placement.
"""

import hashlib
import json
import os
import shutil
from typing import Optional

from trainers.runs import run_folder

# The key that marks a report as ours, with the report format's version.
MARKER = "animals10_export_report"
VERSION = 1
# Scratch folders of an export, beside its --out (`run_folder.scratch_folder`).
SCRATCH_PREFIX = ".tmp-export-"
_PENDING = "report.json"


def report_path(out: str) -> str:
  """The report (and marker) of an export: `<out>.json` beside it."""
  return os.path.normpath(out) + ".json"


def sealed(report: dict) -> dict:
  """`report` with the marker and its own SHA-256 (`report_sha256`)."""
  report = {**report, MARKER: VERSION}
  report.pop("report_sha256", None)
  return {**report, "report_sha256": _digest(report)}


def _digest(report: dict) -> str:
  return hashlib.sha256(json.dumps(report, sort_keys=True).encode()).hexdigest()


def _state(path: str) -> tuple[Optional[dict], str]:
  """(report, "") for a sealed, unedited report of ours at `path`; else (None, what it is:
  "missing", "foreign" (not a report of ours) or "edited")."""
  if not os.path.lexists(path):
    return None, "missing"
  try:
    with open(path) as file:
      report = json.load(file)
  except (OSError, ValueError):
    return None, "foreign"
  if not isinstance(report, dict) or report.get(MARKER) != VERSION:
    return None, "foreign"
  recorded = report.pop("report_sha256", None)
  if recorded != _digest(report):
    return None, "edited"
  return {**report, "report_sha256": recorded}, ""


def check_out(out: str, export_format: str):
  """Raises ValueError unless `out` and its report path are free or hold an unchanged
  export of ours (after `recover` has finished a placement cut short).

  Checked before any work: nothing at `out` or `<out>.json` is touched when it is
  refused.
  """
  recover(out)
  report_file = report_path(out)
  previous, state = _state(report_file)
  if state == "foreign":
    raise ValueError(f"--out={out} would put its report at {report_file}, an existing file "
                     "that is not an export report of ours: nothing was touched; choose "
                     "another --out.")
  if state == "edited":
    raise ValueError(f"--out={out}: its report {report_file} was edited since the export "
                     "wrote it: nothing was touched; choose a new path, or move both away "
                     "yourself.")
  if not os.path.lexists(out):  # free (an old report of ours with no export is replaced)
    return
  kind = "folder" if os.path.isdir(out) else "file"
  if previous is None:
    raise ValueError(f"--out={out} is an existing {kind} that is not an export of ours (no "
                     f"report {report_file} describes it): nothing was touched; choose "
                     "a new path, or move it away yourself.")
  if previous.get("format") != export_format:
    raise ValueError(f"--out={out} holds a {previous.get('format')} export, not "
                     f"{export_format}: nothing was touched; choose another --out.")
  if previous.get("content") != content(out):
    raise ValueError(f"--out={out} was changed since it was exported (its files differ from "
                     f"{report_file}): nothing was touched; choose a new path, or move "
                     "it away yourself.")


def scratch_folder(out: str) -> str:
  """A new scratch folder of an export beside `out`, after finishing the placement of
  any killed export there (`recover`); `run_folder.scratch_folder` removes the rest."""
  parent = os.path.dirname(os.path.abspath(out))
  for _, record in run_folder.stale_scratch(parent, SCRATCH_PREFIX):
    if isinstance(record.get("out"), str):
      recover(record["out"])
  return run_folder.scratch_folder(parent, SCRATCH_PREFIX, out=os.path.abspath(out))


def place(written: str, out: str, report: dict, put_in_place) -> dict:
  """Puts the export `written` at `out` (with `put_in_place`) and its report beside it.

  The sealed report waits in the scratch folder (`written`'s) until the export is in
  place, so a kill between the two renames is recognised by `recover`.
  """
  scratch = os.path.dirname(written)
  report = sealed(report)
  pending = os.path.join(scratch, _PENDING)
  run_folder.write_json(pending, report)
  put_in_place(written, out)
  os.replace(pending, report_path(out))
  os.chmod(report_path(out), run_folder.file_mode())
  return report


def recover(out: str) -> bool:
  """Finishes an export of `out` cut short between its two renames; True if it did.

  Our scratch folder beside `out` holds the new report; when `out` is the export that
  report describes, the report takes its place, and the scratch folder goes.
  """
  parent = os.path.dirname(os.path.abspath(out))
  for folder, record in run_folder.stale_scratch(parent, SCRATCH_PREFIX):
    pending = os.path.join(folder, _PENDING)
    if record.get("out") != os.path.abspath(out) or not os.path.exists(pending):
      continue
    report, state = _state(pending)
    if state:
      continue
    if os.path.lexists(out) and report.get("content") == content(out):
      os.replace(pending, report_path(out))
      print(f"info: the export {out} was cut short before its report was placed; its report "
            f"{report_path(out)} is now in place.", flush=True)
      shutil.rmtree(folder, ignore_errors=True)
      return True
    shutil.rmtree(folder, ignore_errors=True)  # killed before its export was placed
  return False


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
  """The report of the export at `out`, or None when there is none, or it is not a
  sealed, unedited report of ours."""
  return _state(report_path(out))[0]


def tflite_report(path: str) -> dict:
  """The report of the TFLite export at `path`, checked to describe that very file.

  Raises:
    ValueError: one line, when the file or its report is missing, or they disagree.
  """
  if not os.path.isfile(path):
    raise ValueError(f"--model={path}: no such file; give a .tflite file written by "
                     "python -m trainers.export --format=tflite.")
  recover(path)
  report, state = _state(report_path(path))
  if state == "edited":
    raise ValueError(f"--model={path}: its report {report_path(path)} was edited since the "
                     "export wrote it (its report_sha256 no longer matches): export it again "
                     "with python -m trainers.export --format=tflite.")
  if report is None or report.get("format") != "tflite":
    raise ValueError(f"--model={path} has no TFLite export report {report_path(path)} beside "
                     "it (its image size, crop and class names are there): export it with "
                     "python -m trainers.export --format=tflite, or copy its report too.")
  if report.get("content") != content(path):
    raise ValueError(f"--model={path} is not the file its report {report_path(path)} "
                     "describes (SHA-256 differs): copy both again, or export it again.")
  return report
