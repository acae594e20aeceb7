r"""Classifies image files and folders with a trained run, or with its TFLite export.

    python -m trainers.predict --model_dir=work/runs/cnn2 photo.jpg folder/ [--json]
    python -m trainers.predict --model=model.tflite photo.jpg folder/

A TFLite file runs on LiteRT, the runtime a device runs it on, so the deployed
artefact itself can be checked; its report `model.tflite.json` (written by
`trainers.export`) gives its image size, crop and class names.

Any format Pillow reads goes through the dataset's own conversion (RGB JPEG,
downscaled as the run's dataset config stored its images) and the trainer's
decode path at the run's image size and resize mode, batched with tf.data. A
file that cannot be read gets one line and the rest go on; the exit status is
non-zero if any failed.
"""

import os
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from animals10_tfds import animals10_tfds_dataset_builder as builder_lib
from animals10_tfds import image as image_lib
from animals10_tfds import source
from trainers.runs import settings as settings_lib
from trainers.evaluation import explain
from trainers.serving import export_report
from trainers.data import input_pipeline
from trainers.runs import run_paths
from trainers.serving import tflite_file



def expand(paths) -> list[str]:
  """Files named and files inside folders named (sorted, hidden files skipped)."""
  files = []
  for path in paths:
    if os.path.isdir(path):
      for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [os.path.join(root, name) for name in sorted(names)
                  if not name.startswith(".")]
    else:
      files.append(path)
  return files


def predict(model_dir: str, paths, top_k: int = 3, batch_size: int = 32,
            explain_dir: str = None, model: str = None):
  """Top-k predictions for each readable file.

  Args:
    model_dir: a finished run folder (None when `model` is given).
    paths: image files and folders.
    top_k: labels per image.
    batch_size: images per batch.
    explain_dir: if given, write a Grad-CAM picture of each image's top-1 class
      there (`trainers.evaluation.explain`), as `<file name>.png`. Run folders only.
    model: a TFLite file exported by `trainers.export`, instead of `model_dir`.

  Returns:
    (results, errors): `[{path, predictions: [{label, probability}]}]` and
    `[{path, error}]`; a failure to write an explanation is one more error
    (the predictions stand).

  Raises:
    ValueError: bad arguments, or an `explain_dir` that cannot be written
      (checked before anything is predicted).
  """
  if not 1 <= top_k <= len(source.LABELS):
    raise ValueError(f"--top_k must be between 1 and {len(source.LABELS)}, got {top_k}.")
  if batch_size < 1:
    raise ValueError(f"--batch_size must be at least 1, got {batch_size}.")
  if (model_dir is None) == (model is None):
    raise ValueError("give either --model_dir=RUN (a run folder) or --model=FILE.tflite.")
  if model is not None and explain_dir:
    raise ValueError("--explain needs --model_dir: Grad-CAM needs the Keras model, which a "
                     "TFLite file does not hold.")
  image_size, resize, dataset = _input_of(model_dir, model)
  if explain_dir:
    _check_writable(explain_dir)
  encoded, good, errors = _encoded(expand(paths), dataset_short_side(dataset))
  if not good:
    return [], errors
  images = tf.data.Dataset.from_tensor_slices(encoded).map(
      lambda data: input_pipeline.decode_and_resize(data, image_size, resize),
      num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
  keras_model = None
  if model is not None:
    runner = tflite_file.Runner(model)
    probabilities = np.concatenate([runner.probabilities(batch.numpy()) for batch in images])
  else:
    keras_model = keras.saving.load_model(run_paths.RunPaths(model_dir).model, safe_mode=True)
    images = images.map(lambda batch: tf.cast(batch, tf.float32))
    probabilities = keras_model.predict(images, verbose=0)
  results = [{"path": path, "predictions": [
      {"label": source.LABELS[index], "probability": float(row[index])}
      for index in top_indices(row, top_k)]} for path, row in zip(good, probabilities)]
  if explain_dir:
    try:
      _explain(keras_model, images, good, probabilities, explain_dir)
    except OSError as error:
      errors.append({"path": explain_dir, "error": "explanations not written: "
                     f"{error.strerror or error}"})
  return results, errors


def _input_of(model_dir: Optional[str], model: Optional[str]) -> tuple[int, str, str]:
  """(image size, resize mode, dataset) the run or the TFLite file's report gives."""
  if model is not None:
    report = export_report.tflite_report(model)
    return report["image_size"], report["resize"], report["dataset"]
  config = settings_lib.load_finished(model_dir)
  return config.image_size, config.resize, config.dataset


def _encoded(files: list[str], short_side) -> tuple[list[bytes], list[str], list[dict]]:
  """(RGB JPEGs, their files, errors): each file as the dataset converts it, or why not."""
  encoded, good, errors = [], [], []
  for path in files:
    try:
      with open(path, "rb") as file:
        data = file.read()
    except OSError as error:
      errors.append({"path": path, "error": f"unreadable: {error.strerror or error}"})
      continue
    jpeg, reason = image_lib.rgb_jpeg_or_reason(data, short_side)
    if reason:
      errors.append({"path": path, "error": reason})
    else:
      encoded.append(jpeg)
      good.append(path)
  return encoded, good, errors


def top_indices(probabilities: np.ndarray, top_k: int) -> list[int]:
  """The classes of the k largest probabilities, largest first.

  Ties (common in an int8 file's probabilities, steps of 1/256) go to the lower
  class index, as argmax and the run's own predictions break them.
  """
  return [int(index) for index in np.argsort(-probabilities, kind="stable")[:top_k]]


def dataset_short_side(dataset: str):
  """The shorter side the run's dataset config stored its images at (None: original).

  A file is converted exactly as the builder stored the records the run trained
  and was tested on (160px: downscaled to 160 first), so predict gives the
  run's own predictions on its own test photos.
  """
  name = dataset.split("/")[1] if "/" in dataset else builder_lib.Builder.DEFAULT_CONFIG_NAME
  configs = {config.name: config for config in builder_lib.Builder.BUILDER_CONFIGS}
  return configs[name].short_side if name in configs else None


def _check_writable(folder: str):
  """Raises ValueError unless pictures can be written into `folder` (made if needed)."""
  try:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ".animals10-write-check"), "wb"):
      pass
    os.remove(os.path.join(folder, ".animals10-write-check"))
  except OSError as error:
    raise ValueError(f"--explain={folder} cannot be written ({error.strerror or error}): give "
                     "a folder you can write to; nothing was predicted.") from None


def escaped(path: str) -> str:
  """The path with control characters escaped, so a file name holding a newline or
  a tab stays on its own line of output."""
  if path.isprintable():
    return path
  return "".join(character if character.isprintable() else
                 character.encode("unicode_escape").decode("ascii") for character in path)


def table_row(path: str, predictions) -> str:
  """One line of the table: the escaped path, a tab, and its labels."""
  return escaped(path) + "\t" + "  ".join(f"{p['label']} {p['probability']:.3f}"
                                           for p in predictions)


def _explain(model, dataset, paths, probabilities, out_dir):
  explain.feature_map(model)  # one clear line for a model it cannot explain
  written = []
  for images in dataset:
    heat, top = explain.grad_cam(model, images.numpy())
    start = len(written)
    captions = [f"{_short(os.path.basename(path))}: {source.LABELS[index]} "
                f"{probabilities[start + offset, index]:.2f}"
                for offset, (path, index) in enumerate(zip(paths[start:], top))]
    written += explain.write(out_dir, paths[start:start + len(top)], images.numpy(), heat,
                             captions)
  return written


def _short(name: str, length: int = 30) -> str:
  return name if len(name) <= length else name[:length - 3] + "..."
