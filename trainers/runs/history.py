"""RUN/history.csv, one row per epoch: its one reader and its one writer."""

import csv
import io
import os

from trainers.runs import run_folder


def read(path: str) -> list[dict]:
  """The rows of a history.csv, as dicts of strings; [] when there is no file.

  Raises:
    OSError, ValueError, csv.Error: the file is there but cannot be read.
  """
  if not os.path.exists(path):
    return []
  with open(path, newline="") as file:
    return list(csv.DictReader(file))


def add_epoch(path: str, epoch: int, phase: str, logs: dict):
  """Writes `epoch`'s row after the rows of the epochs before it (atomically).

  Rows of that epoch or later are dropped first: epochs that run again after a
  resume replace their old rows instead of doubling them.
  """
  rows = [row for row in read(path) if int(row["epoch"]) < epoch]
  rows.append({"epoch": epoch, "phase": phase,
               **{key: float(value) for key, value in (logs or {}).items()}})
  columns = []
  for row in rows:
    columns += [key for key in row if key not in columns]
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=columns)
  writer.writeheader()
  writer.writerows(rows)
  run_folder.atomic_write(path, buffer.getvalue().encode())
