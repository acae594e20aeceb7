"""What a finished run leaves in its folder, and how a finished run is recognised.

`train._evaluate` predicts the test split; `write_all` turns the predictions
(an `Evaluation`) into the run folder's results: metrics.json (the study's columns, per-class
figures, confusion matrix, clock), predictions.csv, confusion.png,
per_class.png, errors.png. Every file is written atomically, and metrics.json
last: it marks the run as finished.
"""

import csv
import dataclasses
import errno
import hashlib
import io
import json
import os
from typing import Callable, Optional, Sequence

import numpy as np

from trainers.evaluation import figures
from trainers.evaluation import metrics as metrics_lib
from trainers.runs import history as history_lib
from trainers.runs import run_folder
from trainers.runs import run_paths


def finished(model_dir: str) -> Optional[dict]:
  """metrics.json of a finished run; None if there is none or it cannot be read.

  metrics.json is written last and atomically, so an unreadable one was damaged
  afterwards: the run is then treated as unfinished and its results written
  again from the backups (no epoch is trained twice).
  """
  path = run_paths.RunPaths(model_dir).metrics
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
  path = run_paths.RunPaths(model_dir).model
  run_folder.replace_with(path, model.save, suffix=".keras",
                          expected_bytes=3 * sum(weight.nbytes for weight in model.get_weights()))
  return path


def collect(model_dir: str, labels: np.ndarray, probabilities: np.ndarray,
            class_names: Sequence[str], clocks: dict,
            plain: Optional[np.ndarray] = None) -> dict:
  """The contents of metrics.json.

  Args:
    model_dir: the run folder (its history.csv gives the training columns).
    labels: true class of each test image.
    probabilities: the model's output for each test image (with test-time
      augmentation, its average).
    class_names: names, by index.
    clocks: {phase: {"seconds", "images", "cached_features"}}.
    plain: with test-time augmentation, the output on the images alone; its
      figures go under "plain", and "evaluation" says "tta".
  """
  result = {key: None for key in metrics_lib.STUDY_COLUMNS}
  history = history_lib.read(run_paths.RunPaths(model_dir).history)
  if history:
    last = history[-1]
    for column, key in (("accuracy_train", "accuracy"), ("loss_train", "loss"),
                        ("val_accuracy_train", "val_accuracy"),
                        ("val_loss_train", "val_loss")):
      result[column] = float(last[key])
  result.update(metrics_lib.classification_metrics(labels, probabilities.argmax(axis=1),
                                                   class_names))
  result["evaluation"] = "plain" if plain is None else "tta"
  if plain is not None:
    result["plain"] = {key: value for key, value in metrics_lib.classification_metrics(
        labels, plain.argmax(axis=1), class_names).items() if key.endswith("_test")}
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


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """The test split as a run predicted it: what its results are made of."""

  names: Sequence[str]  # file names, in the order of the rows below
  labels: np.ndarray  # true class of each image
  probabilities: np.ndarray  # the model's output (with test-time augmentation, its average)
  class_names: Sequence[str]
  plain: Optional[np.ndarray] = None  # with test-time augmentation: on the images alone


def write_all(model_dir: str, evaluation: Evaluation, *, clocks: dict, precision: str,
              identity: dict, decode: Callable[[list], list]) -> dict:
  """Writes a finished run's results; returns metrics.json's contents.

  Args:
    model_dir: the run folder.
    evaluation: the test split's predictions.
    clocks: {phase: {"seconds", "images", "cached_features"}}.
    precision: the policy the run trained and evaluated under.
    identity: `identity(...)` of the run.
    decode: file names -> the images as the model saw them (for errors.png).
  """
  result = collect(model_dir, evaluation.labels, evaluation.probabilities,
                   evaluation.class_names, clocks, plain=evaluation.plain)
  result.update(identity)
  result["precision"] = precision
  selected = figures.select_errors(evaluation.labels, evaluation.probabilities)
  captions = error_captions(selected, evaluation.names, evaluation.labels,
                            evaluation.probabilities, evaluation.class_names)
  _write(model_dir, result, evaluation, decode([evaluation.names[index] for index in selected]),
         captions)
  return result


def _write(model_dir: str, result: dict, evaluation: Evaluation, error_images: Sequence,
           captions: Sequence[str]):
  """Writes predictions.csv, the three pictures, and metrics.json last."""
  paths = run_paths.RunPaths(model_dir)
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(("file_name", "label", "prediction", "evaluation"))
  class_names = evaluation.class_names
  writer.writerows((name, class_names[label], class_names[prediction], result["evaluation"])
                   for name, label, prediction in zip(
                       evaluation.names, evaluation.labels,
                       evaluation.probabilities.argmax(axis=1)))
  run_folder.atomic_write(paths.predictions, buffer.getvalue().encode())
  figures.confusion_png(paths.figure("confusion.png"), result["confusion_matrix"], class_names)
  figures.per_class_png(paths.figure("per_class.png"), result["per_class"])
  figures.errors_png(paths.figure("errors.png"), error_images, captions)
  run_folder.write_json(paths.metrics, result)  # last: marks done


def names_sha256(names: Sequence[str]) -> str:
  """A hash of a set of file names (order does not matter)."""
  return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()


def identity(settings_sha256: str, dataset_builder, test_names: Sequence[str]) -> dict:
  """What a finished run was: its settings' hash, its data set's and its test images'.

  `dataset_fingerprint` hashes the built dataset's name, version and the
  record count and byte size of every split: two builds of different images
  differ there even when the folder they live in is the same.
  """
  splits = {name: [int(split.num_examples), int(split.num_bytes)]
            for name, split in sorted(dataset_builder.info.splits.items())}
  dataset = json.dumps({"dataset": dataset_builder.info.full_name, "splits": splits},
                       sort_keys=True)
  return {run_paths.SETTINGS_KEY: settings_sha256,
          "dataset_fingerprint": hashlib.sha256(dataset.encode()).hexdigest(),
          "test_names_sha256": names_sha256(test_names)}


@dataclasses.dataclass(frozen=True)
class FinishedRun:
  """A finished run as `load` reads it back."""

  model_dir: str
  metrics: dict
  history: list  # rows of history.csv, as dicts of strings
  predictions: list  # rows of predictions.csv: {file_name, label, prediction}

  def correct(self) -> dict:
    """{file_name: prediction == label} of every test image."""
    return {row["file_name"]: row["label"] == row["prediction"] for row in self.predictions}


def load(model_dir: str) -> FinishedRun:
  """Reads a finished run's metrics.json, history.csv and predictions.csv, checked.

  Raises:
    ValueError: one line naming the file that is missing, unreadable, or (for
      predictions.csv) does not cover exactly the test split the run evaluated.
  """
  paths = run_paths.RunPaths(model_dir)
  rerun = (f"rerun the run's command ({paths.rerun}), "
           "which writes the results again from its backups, or leave the run out")
  evaluate_again = (f"delete {paths.metrics} and rerun the run's command ({paths.rerun}): "
                    "it evaluates again from its "
                    "backups without training; or leave the run out")
  if not os.path.exists(paths.metrics):
    raise ValueError(f"{model_dir} is not a finished run (no metrics.json).")
  try:
    with open(paths.metrics) as file:
      metrics = json.load(file)
  except (OSError, ValueError) as error:
    raise ValueError(f"{paths.metrics} is unreadable ({error}): {rerun}.") from None
  if not isinstance(metrics, dict) or not isinstance(metrics.get("accuracy_test"), (int, float)):
    raise ValueError(f"{paths.metrics} holds no test accuracy (not a finished run's "
                     f"metrics): {rerun}.")
  history = _rows(paths.history, history_lib.read, evaluate_again)
  predictions = _rows(paths.predictions, _read_csv, evaluate_again)
  expected = metrics.get("test_images")
  names = [row.get("file_name") for row in predictions]
  if (expected is not None and len(predictions) != expected) or any(
      row.get("label") is None or row.get("prediction") is None for row in predictions):
    raise ValueError(f"{paths.predictions} has {len(predictions)} whole rows, but the run "
                     f"evaluated {expected} test images: it was cut or edited; {evaluate_again}.")
  recorded = metrics.get("test_names_sha256")
  if recorded is not None and names_sha256(names) != recorded:
    raise ValueError(f"{paths.predictions} does not name the test images the run evaluated "
                     f"(their recorded hash differs): it was edited; {evaluate_again}.")
  return FinishedRun(model_dir, metrics, history, predictions)


def _read_csv(path: str) -> list[dict]:
  with open(path, newline="") as file:
    return list(csv.DictReader(file))


def _rows(path: str, read, remedy: str) -> list[dict]:
  """`read(path)`, or one line naming `path` and `remedy` when it is missing or unreadable."""
  try:
    if not os.path.exists(path):
      raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
    return read(path)
  except (OSError, ValueError, csv.Error) as error:
    reason = getattr(error, "strerror", None) or error
    raise ValueError(f"{path} of a finished run is missing or unreadable ({reason}): "
                     f"{remedy}.") from None
