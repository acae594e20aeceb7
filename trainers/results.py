"""What a finished run leaves in its folder, and how a finished run is recognised.

`train._evaluate` predicts the test split; this module turns the predictions
into the run folder's results: metrics.json (the study's columns, per-class
figures, confusion matrix, clock), predictions.csv, confusion.png,
per_class.png, errors.png. Every file is written atomically, and metrics.json
last: it marks the run as finished.
"""

import csv
import io
import json
import os
from typing import Optional, Sequence

import numpy as np

from trainers import callbacks as callbacks_lib
from trainers import figures
from trainers import metrics as metrics_lib
from trainers import run_folder

METRICS_FILE = "metrics.json"


def finished(model_dir: str) -> Optional[dict]:
  """metrics.json of a finished run; None if there is none or it cannot be read.

  metrics.json is written last and atomically, so an unreadable one was damaged
  afterwards: the run is then treated as unfinished and its results written
  again from the backups (no epoch is trained twice).
  """
  path = os.path.join(model_dir, METRICS_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as file:
      result = json.load(file)
    if isinstance(result, dict) and "accuracy_test" in result:
      return result
    problem = "not a metrics table"
  except (OSError, ValueError) as error:
    problem = str(error)
  print(f"info: {path} is unreadable ({problem}): treating the run as unfinished and "
        "writing its results again.", flush=True)
  return None


def summary_row(result: dict) -> str:
  return " ".join(f"{key}={result[key]:.4f}" for key in metrics_lib.STUDY_COLUMNS
                  if result.get(key) is not None)


def save_model(model_dir: str, model) -> str:
  """Writes model.keras (atomically); returns its path."""
  path = os.path.join(model_dir, "model.keras")
  run_folder.replace_with(path, model.save, suffix=".keras",
                          expected_bytes=3 * sum(weight.nbytes for weight in model.get_weights()))
  return path


def metrics(model_dir: str, labels: np.ndarray, probabilities: np.ndarray,
            class_names: Sequence[str], clocks: dict) -> dict:
  """The contents of metrics.json.

  Args:
    model_dir: the run folder (its history.csv gives the training columns).
    labels: true class of each test image.
    probabilities: the model's output for each test image.
    class_names: names, by index.
    clocks: {phase: {"seconds", "images", "cached_features"}}.
  """
  result = {key: None for key in metrics_lib.STUDY_COLUMNS}
  history = callbacks_lib.read_history(os.path.join(model_dir, "history.csv"))
  if history:
    last = history[-1]
    for column, key in (("accuracy_train", "accuracy"), ("loss_train", "loss"),
                        ("val_accuracy_train", "val_accuracy"),
                        ("val_loss_train", "val_loss")):
      result[column] = float(last[key])
  result.update(metrics_lib.classification_metrics(labels, probabilities.argmax(axis=1),
                                                   class_names))
  result["test_images"] = int(len(labels))
  result["train_seconds"] = round(sum(clock["seconds"] for clock in clocks.values()), 3)
  result["phases"] = {name: {
      "seconds": round(clock["seconds"], 3),
      "images_per_second": round(clock["images"] / max(clock["seconds"], 1e-9), 3),
      "cached_features": clock["cached_features"]} for name, clock in clocks.items()}
  return result


def error_captions(selected: Sequence[int], names: Sequence[str], labels: np.ndarray,
                   probabilities: np.ndarray, class_names: Sequence[str]) -> list[str]:
  """`file name / true -> predicted probability` under each picture of errors.png."""
  captions = []
  for index in selected:
    predicted = int(probabilities[index].argmax())
    captions.append(f"{os.path.basename(names[index])[:24]}\n{class_names[labels[index]]}"
                    f" -> {class_names[predicted]} {probabilities[index, predicted]:.2f}")
  return captions


def write(model_dir: str, result: dict, names: Sequence[str], labels: np.ndarray,
          probabilities: np.ndarray, class_names: Sequence[str], error_images: Sequence,
          captions: Sequence[str]):
  """Writes predictions.csv, the three pictures, and metrics.json last."""
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(("file_name", "label", "prediction"))
  writer.writerows((name, class_names[label], class_names[prediction]) for name, label,
                   prediction in zip(names, labels, probabilities.argmax(axis=1)))
  run_folder.atomic_write(os.path.join(model_dir, "predictions.csv"),
                          buffer.getvalue().encode())
  figures.confusion_png(os.path.join(model_dir, "confusion.png"), result["confusion_matrix"],
                        class_names)
  figures.per_class_png(os.path.join(model_dir, "per_class.png"), result["per_class"])
  figures.errors_png(os.path.join(model_dir, "errors.png"), error_images, captions)
  run_folder.write_json(os.path.join(model_dir, METRICS_FILE), result)  # last: marks done
