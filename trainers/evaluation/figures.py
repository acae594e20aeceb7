"""The run folder's pictures: confusion matrix, per-class bars, error gallery.

Each is drawn from figures the run already computed (metrics.json's numbers,
the test predictions), with matplotlib's Agg backend, and written atomically.
"""

import io
from typing import Sequence

import numpy as np

from trainers.runs import run_folder

# The error gallery: the most confident mistakes, at most this many per true
# class and in all (ten classes, four each).
ERRORS_PER_CLASS = 4
ERRORS_MAX = 40


def pyplot():
  """matplotlib's pyplot on the Agg backend (files only, no display).

  Imported here, not at the top: the backend must be chosen before pyplot is
  first imported, and choosing it at import time would be module-level work.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as pyplot_module  # pylint: disable=g-import-not-at-top
  return pyplot_module


def png_bytes(figure, dpi: int = 100) -> bytes:
  """A figure as PNG bytes; the figure is closed."""
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=dpi)
  pyplot().close(figure)
  return buffer.getvalue()


def save(figure, path: str, dpi: int = 100):
  """Writes a figure as a PNG file, atomically (`run_folder.atomic_write`); closes it.

  Every picture the trainer and the tools write goes through here.
  """
  run_folder.atomic_write(path, png_bytes(figure, dpi))


def confusion_png(path: str, confusion: Sequence[Sequence[int]], class_names: Sequence[str]):
  """Saves the confusion matrix (rows: true class, columns: predicted)."""
  matrix = np.asarray(confusion)
  figure, axes = pyplot().subplots(figsize=(7, 6))
  axes.imshow(matrix, cmap="Blues")
  axes.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
  axes.set_yticks(range(len(class_names)), class_names)
  axes.set_xlabel("predicted")
  axes.set_ylabel("true")
  for (row, column), value in np.ndenumerate(matrix):
    axes.text(column, row, str(value), ha="center", va="center", fontsize=7,
              color="white" if value > matrix.max() / 2 else "black")
  figure.tight_layout()
  save(figure, path)


def per_class_png(path: str, per_class: dict):
  """Precision, recall and F1 of each class as grouped bars (metrics.json's per_class)."""
  names = list(per_class)
  figure, axes = pyplot().subplots(figsize=(9, 4))
  for offset, key in ((-0.27, "precision"), (0, "recall"), (0.27, "f1-score")):
    axes.bar(np.arange(len(names)) + offset, [per_class[name][key] for name in names],
             width=0.27, label=key)
  axes.set_xticks(range(len(names)),
                  [f"{name}\n({per_class[name]['support']})" for name in names], fontsize=8)
  axes.set_ylim(0, 1.15)  # room for the legend above the bars
  axes.set_yticks(np.linspace(0, 1, 6))
  axes.set_ylabel("test split")
  axes.set_title("Per class (support in brackets)")
  axes.legend(fontsize=8, ncols=3, loc="upper right")
  figure.tight_layout()
  save(figure, path)


def select_errors(labels: np.ndarray, probabilities: np.ndarray,
                  per_class: int = ERRORS_PER_CLASS, limit: int = ERRORS_MAX) -> list[int]:
  """Indices of the most confident mistakes: up to `per_class` per true class.

  Args:
    labels: true class of each example.
    probabilities: [examples, classes] predicted probabilities.
    per_class: most mistakes kept for one true class.
    limit: most mistakes kept in all.

  Returns:
    Example indices, most confident mistake first (the probability of the
    wrongly predicted class), ties broken by index.
  """
  predictions = probabilities.argmax(axis=1)
  confidence = probabilities.max(axis=1)
  wrong = np.flatnonzero(predictions != labels)
  order = wrong[np.lexsort((wrong, -confidence[wrong]))]
  kept, counts = [], {}
  for index in order:
    label = int(labels[index])
    if counts.get(label, 0) < per_class:
      counts[label] = counts.get(label, 0) + 1
      kept.append(int(index))
  return kept[:limit]


def errors_png(path: str, images: Sequence[np.ndarray], captions: Sequence[str],
               title: str = "Most confident mistakes on the test split (true -> predicted, "
               "probability)", empty: str = "no mistakes on the test split",
               columns: int = 8):
  """A contact sheet of images (uint8 RGB, as the model saw them) with captions."""
  count = max(1, len(images))
  columns = min(columns, count)
  rows = -(-count // columns)
  figure, axes_grid = pyplot().subplots(rows, columns, figsize=(2.1 * columns, 2.5 * rows),
                                         squeeze=False)
  for axes in axes_grid.ravel():
    axes.axis("off")
  if not len(images):
    axes_grid[0, 0].text(0.5, 0.5, empty, ha="center", va="center")
  for axes, image, caption in zip(axes_grid.ravel(), images, captions):
    axes.imshow(image)
    axes.set_title(caption, fontsize=6.5)
  figure.suptitle(title, fontsize=9)
  figure.tight_layout()
  save(figure, path, dpi=90)
