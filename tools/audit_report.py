"""The audit's files: audit.csv, audit.md and its contact sheets (see `tools.audit`).

audit.md is written last and ends with a marker line that records the SHA-256 of
every other file the audit wrote and of audit.md's own text. A rerun into the
same folder replaces those files only while they are the audit's unchanged
output: a hand-edited audit.csv (the README's workflow: keep the rows you agree
with) or a user's file of one of these names is refused before any work, and
kept.
"""

import csv
import hashlib
import json
import os

import numpy as np

from animals10_tfds import source
from trainers.evaluation import figures
from trainers.data import input_pipeline
from trainers.data import records as records_lib
from trainers.runs import run_folder
from trainers.data import split_plan

SPLITS = split_plan.SPLITS
COLUMNS = ("file_name", "split", "label", "suggested_label", "issue", "score", "partner_file",
           "partner_split", "phash_distance")
SHEET_MAX = 40
# What the audit writes into --out, audit.md (the marker) last.
OUTPUTS = ("audit.csv", "label_issues.png", "leaks.png", "outliers.png")
REPORT = "audit.md"
_MARKER = "<!-- animals10 audit: "


def _text_digest(text: str) -> str:
  return hashlib.sha256(text.encode()).hexdigest()


def _recorded(out: str):
  """{file: SHA-256} that an unedited audit.md of ours records, else None."""
  try:
    with open(os.path.join(out, REPORT)) as file:
      text = file.read()
  except (OSError, UnicodeDecodeError):
    return None
  body, _, last = text.rstrip("\n").rpartition("\n")
  if not last.startswith(_MARKER) or not last.endswith(" -->"):
    return None
  try:
    record = json.loads(last[len(_MARKER):-len(" -->")])
    files, own = record["files"], record["audit.md"]
  except (ValueError, KeyError, TypeError):
    return None
  return files if own == _text_digest(body + "\n") and isinstance(files, dict) else None


def check_out(out: str):
  """Raises ValueError, before any work, unless the audit may write into `out`: a
  folder (or a path to make one) where every file of `OUTPUTS` and audit.md is
  either absent or the unchanged output of an earlier audit."""
  if os.path.lexists(out) and not os.path.isdir(out):
    raise ValueError(f"--out={out} is a file; the audit writes a folder of files (audit.csv, "
                     "audit.md, sheets): give a folder.")
  present = [name for name in (REPORT, *OUTPUTS) if os.path.lexists(os.path.join(out, name))]
  if not present:
    return
  recorded = _recorded(out)
  for name in present:
    path = os.path.join(out, name)
    if name == REPORT and recorded is None:
      raise ValueError(f"{path} is not an unedited report of an audit (edited, or not "
                       "ours): nothing was written; move it away or choose another --out.")
    if name != REPORT and (recorded is None or not os.path.isfile(path)
                           or recorded.get(name) != run_folder.sha256_of(path)):
      raise ValueError(f"{path} is not the audit's unchanged output (edited by hand, or not "
                       "ours), and a rerun would replace it: nothing was written; move it "
                       "away first (an edited audit.csv works as --exclude from anywhere), "
                       "or choose another --out.")


def phash_distance(first: int, second: int) -> int:
  """Bits in which two 64-bit pHashes (stored as int64) differ."""
  return bin((int(first) ^ int(second)) & (2**64 - 1)).count("1")


def rows(records, found, pairs, outliers) -> list[dict]:
  """audit.csv's rows: label issues, then near-duplicates, then outliers, each by score."""
  names, labels = records.names, records.labels

  def row(index, issue, score, **extra):
    return {"file_name": names[index], "split": SPLITS[records.splits[index]],
            "label": source.LABELS[labels[index]], "suggested_label": "", "issue": issue,
            "score": f"{score:.6f}", "partner_file": "", "partner_split": "",
            "phash_distance": "", **extra}
  table = [row(index, "label", found.score[index],
               suggested_label=source.LABELS[found.suggested[index]])
           for index in found.issues]
  table += [row(later, "near_duplicate", cosine, partner_file=names[earlier],
                partner_split=SPLITS[records.splits[earlier]],
                phash_distance=str(phash_distance(records.phash[later],
                                                  records.phash[earlier])))
            for later, earlier, cosine in pairs]
  table += [row(index, "outlier", z) for index, _, z in outliers]
  return table


def write(out: str, builder, config, records, found, pairs, outliers,
          command: str = None) -> dict:
  """Writes audit.csv, audit.md and the three sheets into `out`; returns the counts."""
  os.makedirs(out, exist_ok=True)
  table = rows(records, found, pairs, outliers)

  def write_csv(temporary):
    with open(temporary, "w", newline="") as file:
      writer = csv.DictWriter(file, fieldnames=COLUMNS)
      writer.writeheader()
      writer.writerows(table)
  run_folder.replace_with(os.path.join(out, "audit.csv"), write_csv, suffix=".csv")
  summary = {"records": len(records.labels), "label": len(found.issues),
             "near_duplicate": len(pairs), "outlier": len(outliers)}
  _sheets(out, builder, config, records, found, pairs, outliers)
  write_report(out, _markdown(config, records, found, pairs, summary, command))
  return summary


def write_report(out: str, markdown: str):
  """Writes audit.md, last, ending in the marker line: the SHA-256 of each file of
  `OUTPUTS` in `out` and of the report's own text."""
  files = {name: run_folder.sha256_of(os.path.join(out, name)) for name in OUTPUTS
           if os.path.isfile(os.path.join(out, name))}
  markdown += _MARKER + json.dumps({"files": files, "audit.md": _text_digest(markdown)},
                                   sort_keys=True) + " -->\n"
  run_folder.atomic_write(os.path.join(out, REPORT), markdown.encode())


def _markdown(config, records, found, pairs, summary, command) -> str:
  labels, classes = records.labels, list(source.LABELS)
  lines = [f"# Data audit of {config.dataset} ({summary['records']} records)", "",
           f"Features: `{config.model}` at {config.image_size} px, weights `{config.weights}`.",
           f"Found: {summary['label']} likely label errors, {summary['near_duplicate']} "
           f"near-duplicate pairs across splits, {summary['outlier']} outliers "
           "(`audit.csv`; pictures in `label_issues.png`, `leaks.png`, `outliers.png`).", "",
           "## Records per class and split", "",
           "| class | " + " | ".join(SPLITS) + " | estimated noise rate |",
           "|---|" + "---|" * (len(SPLITS) + 1)]
  for index, name in enumerate(classes):
    counts = [int(np.sum((labels == index) & (records.splits == split)))
              for split in range(len(SPLITS))]
    rate = found.noise_rate[index]
    lines.append(f"| {name} | " + " | ".join(map(str, counts)) +
                 f" | {'' if np.isnan(rate) else f'{rate:.3f}'} |")
  lines += ["", "The noise rate is confident learning's estimate of p(true label != given "
            "| given), from the calibrated confident joint.", "",
            "## Flagged labels: given (rows) against suggested (columns)", "",
            "| given \\ suggested | " + " | ".join(classes) + " |",
            "|---|" + "---|" * len(classes)]
  for index, name in enumerate(classes):
    counts = [int(np.sum(found.suggested[found.issues][labels[found.issues] == index] == j))
              for j in range(len(classes))]
    lines.append(f"| {name} | " + " | ".join(str(c) if c else "" for c in counts) + " |")
  lines += ["", "## Commands", "", "```",
            command or f"python -m tools.audit --dataset={config.dataset} "
            f"--model={config.model} --weights={config.weights} "
            f"--image_size={config.image_size} --out=DIR",
            "# keep the rows you agree with, then train without them:",
            "python -m trainers.main --flagfile=... --exclude=DIR/audit.csv", "```", ""]
  return "\n".join(lines)


def _sheets(out, builder, config, records, found, pairs, outliers):
  wanted = ([int(index) for index in found.issues[:SHEET_MAX]] +
            [index for pair in pairs[:SHEET_MAX // 2] for index in pair[:2]] +
            [index for index, _, _ in outliers[:SHEET_MAX]])
  images = _decoded(builder, config, records, wanted)
  names = records.names

  def short(index):
    name = os.path.basename(names[index])
    return name if len(name) <= 22 else name[:19] + "..."
  figures.errors_png(
      os.path.join(out, "label_issues.png"),
      [images[int(i)] for i in found.issues[:SHEET_MAX]],
      [f"{short(i)}\n{source.LABELS[records.labels[i]]} -> "
       f"{source.LABELS[found.suggested[i]]} {found.score[i]:.2f}"
       for i in found.issues[:SHEET_MAX]],
      title="Likely label errors (given -> suggested, margin)", empty="no label issues")
  leak_images, leak_captions = [], []
  for later, earlier, cosine in pairs[:SHEET_MAX // 2]:
    leak_images += [images[later], images[earlier]]
    leak_captions += [f"{short(later)}\n{SPLITS[records.splits[later]]} cos {cosine:.3f}",
                      f"{short(earlier)}\n{SPLITS[records.splits[earlier]]}"]
  figures.errors_png(os.path.join(out, "leaks.png"), leak_images, leak_captions,
                     title="Near-duplicates across splits (pairs side by side)",
                     empty="no near-duplicates across splits", columns=6)
  figures.errors_png(
      os.path.join(out, "outliers.png"), [images[i] for i, _, _ in outliers[:SHEET_MAX]],
      [f"{short(i)}\n{source.LABELS[records.labels[i]]} z {z:.1f}"
       for i, _, z in outliers[:SHEET_MAX]],
      title="Outliers (far for their class: robust z of the k-th neighbour distance)",
      empty="no outliers")


def _decoded(builder, config, records, indices) -> dict:
  """{record index: uint8 image as the model sees it} of the given records."""
  result = {}
  for split_index, split in enumerate(SPLITS):
    chosen = sorted({i for i in indices if records.splits[i] == split_index})
    if not chosen:
      continue
    by_name = {records.names[i]: i for i in chosen}
    wanted = records_lib.records(builder, split, keep_names=list(by_name))
    for name, image in wanted.map(lambda record: (
        record["file_name"], input_pipeline.decode_and_resize(
            record["image"], config.image_size, config.resize))).as_numpy_iterator():
      result[by_name[name.decode()]] = image
  return result
