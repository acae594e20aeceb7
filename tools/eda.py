r"""The original study's data analysis as one command: tables and plots.

    python -m tools.eda --raw_dir=DIR/raw-img --out=REPORT_DIR   # or DIR/archive.zip
    python -m tools.eda --from_tfds=animals10_tfds/full --data_dir=DATA --out=REPORT_DIR

Reads every file once, in parallel, with the builder's scanner (`--raw_dir`), or
reads the same table from a built dataset's records and metadata.json without
decoding a pixel (`--from_tfds`). Writes images.csv, report.md and PNG plots.
"""

import os
import sys
import time

from absl import app
from absl import flags
import pandas as pd
# TFDS (and through it TensorFlow) is imported only by --from_tfds, inside
# `table_from_tfds`: a scan of raw files never waits for it.

from animals10_tfds import grouping
from animals10_tfds import image as image_lib
from animals10_tfds import scan
from animals10_tfds import source as source_lib
from tools import eda_report

COLUMNS = ("img", "hash", "width", "height", "mode", "format", "palette", "orientation",
           "path", "label", "phash", "error")

_FLAGS = flags.FLAGS


def table_from_raw(raw_dir: str, workers=None, progress=True) -> tuple[pd.DataFrame, list]:
  """One row per file under `raw_dir` (a raw-img folder, its parent, or the zip).

  Returns:
    (table, near-duplicate groups as lists of paths).
  """
  source = source_lib.Source.find(raw_dir)
  entries, loose = source.list()
  rows = [_row(result) for result in scan.scan(source, entries, workers=workers,
                                                progress=progress)]
  rows += [{"img": os.path.basename(item["path"]), "path": item["path"], "label": "",
            "error": item["reason"]} for item in loose]
  table = pd.DataFrame(rows, columns=COLUMNS)
  good = table[table.error == ""].drop_duplicates("hash")
  roots = grouping.near_duplicate_groups([int(value, 16) for value in good.phash])
  members = {}
  for path, root in zip(good.path, roots):
    members.setdefault(root, []).append(path)
  return table, sorted(sorted(group) for group in members.values() if len(group) > 1)


def _row(result: scan.ScanResult) -> dict:
  return {"img": result.path.rsplit("/", 1)[-1], "hash": result.sha256,
          "width": result.width, "height": result.height, "mode": result.mode,
          "format": result.format, "palette": result.palette or "None",
          "orientation": result.orientation, "path": result.path,
          "label": source_lib.LABELS[result.label], "phash": f"{result.phash:016x}",
          "error": result.error}


def table_from_tfds(dataset: str, data_dir) -> tuple[pd.DataFrame, list]:
  """The same table from a built dataset: record metadata, no image decoding."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from trainers.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  builder = dataset_lib.builder(dataset, data_dir)
  fields = ("file_name", "sha256", "width", "height", "mode", "format", "orientation",
            "label", "phash")
  rows = []
  for split in builder.info.splits:
    records = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    records = records.map(lambda record: {key: record[key] for key in fields})
    for record in records.as_numpy_iterator():
      path = record["file_name"].decode()
      rows.append({"img": path.rsplit("/", 1)[-1], "hash": record["sha256"].decode(),
                   "width": int(record["width"]), "height": int(record["height"]),
                   "mode": record["mode"].decode(), "format": record["format"].decode(),
                   "palette": "", "orientation": record["orientation"].decode(),
                   "path": path, "label": source_lib.LABELS[record["label"]],
                   "phash": f"{image_lib.phash_from_int64(record['phash']):016x}", "error": ""})
  metadata = builder.info.metadata
  by_path = {row["path"]: row for row in rows}
  for item in metadata["duplicates"]:  # identical bytes: the original's properties
    copy = dict(by_path[item["duplicate_of"]], path=item["path"],
                img=item["path"].rsplit("/", 1)[-1])
    copy["label"] = source_lib.LABELS[source_lib.FOLDERS.index(item["path"].split("/")[0])]
    rows.append(copy)
  for item in metadata["skipped"]:
    folder = item["path"].split("/")[0]
    rows.append({"img": item["path"].rsplit("/", 1)[-1], "path": item["path"],
                 "label": source_lib.LABELS[source_lib.FOLDERS.index(folder)]
                 if folder in source_lib.FOLDERS else "", "error": item["reason"]})
  table = pd.DataFrame(rows, columns=COLUMNS).sort_values("path", ignore_index=True)
  return table, metadata["near_duplicate_group_members"]


def run(table: pd.DataFrame, groups: list, out: str, seconds: float) -> str:
  """Writes images.csv, the plots and report.md into `out`; returns the report."""
  os.makedirs(out, exist_ok=True)
  table = table.fillna({"error": ""})
  table.to_csv(os.path.join(out, "images.csv"), index=False)
  good = table[table.error == ""]
  eda_report.plots(good, out)
  report = eda_report.markdown(table, groups, seconds)
  with open(os.path.join(out, "report.md"), "w") as file:
    file.write(report)
  return report


def _define_flags():
  flags.DEFINE_string("raw_dir", None, "raw-img folder, its parent, or Kaggle's archive.zip.")
  flags.DEFINE_string("from_tfds", None, "Read a built dataset instead, e.g. animals10_tfds/full.")
  flags.DEFINE_string("data_dir", None, "TFDS data_dir, with --from_tfds.")
  flags.DEFINE_string("out", None, "Report folder.", required=True)
  flags.DEFINE_integer("workers", 0, "Scan processes; 0 uses every core.")


def main(argv):
  del argv
  if bool(_FLAGS.raw_dir) == bool(_FLAGS.from_tfds):
    sys.exit("eda: give exactly one of --raw_dir or --from_tfds.")
  start = time.time()
  try:
    if _FLAGS.raw_dir:
      table, groups = table_from_raw(_FLAGS.raw_dir, workers=_FLAGS.workers or None)
    else:
      table, groups = table_from_tfds(_FLAGS.from_tfds, _FLAGS.data_dir)
  except (FileNotFoundError, ValueError) as error:
    sys.exit(f"eda: {error}")
  run(table, groups, _FLAGS.out, time.time() - start)
  print(f"{len(table)} files in {time.time() - start:.1f} s; report: "
        f"{os.path.join(_FLAGS.out, 'report.md')}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
