"""Backbone weights: ImageNet from Keras's cache (or a download), or a local file.

Air-gapped machines are common, so a weights file is checked before anything
trains, and every way it can be wrong ends in one `WeightsError` line that names
the file, says what is wrong and what to pass instead: a missing path, a folder,
a file that is not HDF5 or is cut short, a file of another architecture or width.

`--weights=imagenet` loads the file Keras keeps in `$KERAS_HOME/models`
(default `~/.keras/models`) when it is there, under the name Keras itself gives
it, so a file copied there by hand is used offline. Without it, Keras downloads
it; offline, the line names that file and that folder.
"""

import os
import urllib.error
import warnings
from typing import Optional

import h5py
import keras

from trainers.modeling import models


class WeightsError(ValueError):
  """A weights file that cannot be used for the model asked for."""


def keras_models_folder() -> str:
  """Where Keras caches downloaded weights: $KERAS_HOME/models, default ~/.keras/models.

  Raises:
    WeightsError: KERAS_HOME (or its models/) is a file, where Keras needs a folder.
  """
  home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
  for path in (home, os.path.join(home, "models")):
    if os.path.lexists(path) and not os.path.isdir(path):
      raise WeightsError(f"{path} is a file, where Keras keeps its weights cache (KERAS_HOME="
                         f"{home}): set KERAS_HOME to a folder, or move the file away.")
  return os.path.join(home, "models")


def resolve(model: str, weights: str, image_size: int) -> Optional[str]:
  """What `models.build_model` gets for the `--weights` flag.

  Args:
    model: a registry key.
    weights: "imagenet", "none" or a file path.
    image_size: the model's input side (Keras names MobileNetV2 files by it).

  Returns:
    None (random initialisation), "imagenet" (Keras downloads it), or the path
    of a checked HDF5 file (given, or found in Keras's cache).

  Raises:
    WeightsError: a path that is missing, a folder, or not a readable HDF5 file.
  """
  spec = models.REGISTRY[model]
  if weights.lower() == "none":
    return None
  if weights == "imagenet":
    if spec.imagenet_file is None:
      return None  # the study's CNNs have no pretrained weights
    cached = os.path.join(keras_models_folder(), spec.imagenet_file(image_size))
    if os.path.exists(cached):
      check_file(cached, model)
      return cached
    return "imagenet"
  check_file(weights, model)
  return weights


def check_file(path: str, model: str):
  """Raises WeightsError unless `path` is a readable HDF5 file."""
  what_to_pass = (f"pass the Keras .h5 weights file of {model}"
                  f"{_expected(model)}, imagenet, or none")
  if not os.path.exists(path):
    raise WeightsError(f"--weights={path}: no such file; {what_to_pass}.")
  if os.path.isdir(path):
    raise WeightsError(f"--weights={path} is a folder; {what_to_pass}.")
  try:
    with h5py.File(path, "r") as file:
      file.visit(lambda name: None)  # reads the whole index: a cut-short file fails here
  except OSError as error:  # h5py's only error type for a file it cannot read
    detail = str(error).split("(", 1)[-1].rstrip(")") if "(" in str(error) else str(error)
    raise WeightsError(f"--weights={path} is not a readable HDF5 weights file ({detail}): "
                       f"download or copy it again, or {what_to_pass}.") from None


def load_into(backbone: keras.Model, path: str, model: str):
  """Loads a checked weights file into a freshly built backbone, or raises one line.

  Keras's loader names neither the file nor what to do ("Layer count mismatch
  when loading weights from file. Model expected 242 layers, found 370 saved
  layers."), so that sentence is kept as the reason and both are added.
  """
  try:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      backbone.load_weights(path)
    # Keras's .weights.h5 loader skips what it cannot match with a warning
    # ("Affected layers will retain their freshly-initialized weights"): a
    # partial load, which is an error here.
    skipped = [warning for warning in caught if issubclass(warning.category, UserWarning)
               and os.sep + "saving" + os.sep in warning.filename]
    if skipped:
      raise ValueError(str(skipped[0].message))
  except Exception as error:  # pylint: disable=broad-except  (Keras: ValueError; h5py: several)
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise WeightsError(
        f"--weights={path} does not fit {model}'s backbone ({reason[:200]}): it holds the "
        f"weights of another architecture or width; pass the file made for {model}"
        f"{_expected(model)}, imagenet, or none.") from None


def download_failed(error: BaseException) -> bool:
  """True for Keras's failed download of ImageNet weights.

  Keras raises a bare Exception ("URL fetch failure on ...") from inside its
  `except urllib.error.URLError`, so the type to look for is the one it wraps.
  """
  while error is not None:
    if isinstance(error, urllib.error.URLError):
      return True
    error = error.__cause__ or error.__context__
  return False


def offline_message(model: str, image_size: int) -> str:
  spec = models.REGISTRY[model]
  return (f"--weights=imagenet: {model}'s ImageNet weights could not be downloaded (no "
          f"network?) and are not in Keras's cache: put {spec.imagenet_file(image_size)} in "
          f"{keras_models_folder()} (or pass its path with --weights=PATH), or use "
          "--weights=none.")


def _expected(model: str) -> str:
  spec = models.REGISTRY[model]
  if spec.imagenet_file is None:
    return ""
  return f" (Keras names it {spec.imagenet_file(224)})"
