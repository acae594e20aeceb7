"""Frozen-backbone features, computed once per split instead of once per epoch.

In the frozen phase of a transfer model without augmentation, the backbone runs
in inference mode on the same images every epoch: its pooled output never
changes. So the trainer runs the model up to its pooling layer once over each
split (through the same decode path), keeps the features, and trains the head
alone on them: measured on 2 cores at 100 px, mnv2's frozen phase runs 240
img/s end to end against 5,600 img/s for the head alone.

Features are saved per split in the run folder as soon as a split is done
(`features/<phase>/<split>.features.npy` and `.labels.npy`, each written
atomically, then `.meta.json` with their SHA-256, count, shape and the run's
settings hash), so a killed run resumes without extracting a finished split
again, and a damaged or foreign file is never trained on; they are deleted
when the phase is done. A split larger than `MEMORY_BYTES` is streamed
from its memory-mapped file instead of being loaded.
"""

import json
import os
import shutil
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from trainers import input_pipeline
from trainers import records as records_lib
from trainers import split_plan
from trainers import models
from trainers import run_folder

MEMORY_BYTES = 2 << 30


def reason_not_cached(config, phase: str, images_trained: int,
                      train_images: int) -> Optional[str]:
  """Why a phase trains end to end; None when its features can be cached.

  Args:
    config: the run's `Config`.
    phase: "train" (frozen backbone) or "fine_tune".
    images_trained: images the phase will train on (epochs x steps x batch).
    train_images: images of one full epoch of the train split (whole batches).
  """
  if not config.cache_features:
    return "--nocache_features"
  if models.REGISTRY[config.model].backbone is None:
    return f"{config.model} has no frozen backbone"
  if phase != "train":
    return "the backbone's top trains in this phase"
  if config.augment != "none":
    return f"--augment={config.augment} changes the backbone's input every epoch"
  for name in ("mixup", "cutmix"):
    if getattr(config, name):
      return f"--{name} mixes the backbone's input images every step"
  if images_trained < train_images:
    return (f"it trains on {images_trained} images, fewer than one pass over the "
            f"{train_images} of the train split")
  return None


class SplitFeatures:
  """One split's features and labels, in the order of its records."""

  def __init__(self, features: np.ndarray, labels: np.ndarray):
    self.features, self.labels = features, labels

  def __len__(self):
    return len(self.labels)

  def dataset(self) -> tf.data.Dataset:
    """(float32 features, int64 label) pairs in record order."""
    if self.features.nbytes <= MEMORY_BYTES:
      return tf.data.Dataset.from_tensor_slices(
          (np.asarray(self.features), np.asarray(self.labels)))
    features, labels = self.features, self.labels
    return tf.data.Dataset.from_generator(
        lambda: zip(features, labels), output_signature=(
            tf.TensorSpec(features.shape[1:], tf.float32), tf.TensorSpec((), tf.int64)))


def extract(extractor: keras.Model, records: tf.data.Dataset, *, folder: str, split: str,
            batch_size: int, image_size: int, resize: str,
            settings_sha256: Optional[str] = None) -> SplitFeatures:
  """The pooled features of `records`, from `folder` if a previous process saved them.

  Saved features are used only when their metadata (written last) vouches for
  them: the SHA-256 of both files, the count and shape, and the settings hash
  of the run that made them. Anything else (a kill mid-write, a damaged or
  swapped file) is said in one line, and the split is extracted again.

  Args:
    extractor: images to pooled features (`models.split_at_pool`).
    records: `records_lib.records(...)` of the split (this worker's share).
    folder: where the split's files are kept.
    split: the split's name.
    batch_size: images per prediction batch (divisible by the replicas).
    image_size: the model's input side.
    resize: see `input_pipeline.decode_and_resize`.
    settings_sha256: the run's `config.settings_sha256`, recorded with the files.

  Returns:
    The split's `SplitFeatures`, in the order of `records`.
  """
  saved, problem = _load_saved(folder, split, settings_sha256)
  if saved is not None:
    return saved
  if problem:
    print(f"info: cached features of {split} in {folder} cannot be used ({problem}); "
          "extracting them again.", flush=True)
  labels, _ = records_lib.labels_and_names(records)
  plan = split_plan.EvalPlan(count=len(labels), batch_size=batch_size)
  batches = input_pipeline.eval_batches(records, plan, image_size=image_size, resize=resize)
  features = extractor.predict(batches, verbose=0)[:len(labels)].astype(np.float32)
  if len(features) != len(labels):
    raise RuntimeError(f"feature extraction of {split} gave {len(features)} rows for "
                       f"{len(labels)} records")
  features_path, labels_path, meta_path = _paths(folder, split)
  _save(features_path, features)
  _save(labels_path, labels)
  run_folder.write_json(meta_path, {  # last: vouches for the two files
      "count": len(labels), "shape": list(features.shape), "dtype": str(features.dtype),
      "features_sha256": run_folder.sha256_of(features_path),
      "labels_sha256": run_folder.sha256_of(labels_path),
      "settings_sha256": settings_sha256})
  return SplitFeatures(_in_memory(np.load(features_path, mmap_mode="r")), labels)


def _paths(folder: str, split: str) -> tuple[str, str, str]:
  return tuple(os.path.join(folder, f"{split}.{kind}") for kind in
               ("features.npy", "labels.npy", "meta.json"))


def _load_saved(folder: str, split: str,
                settings_sha256: Optional[str]) -> tuple[Optional[SplitFeatures], str]:
  """(features, "") when the saved split checks out, else (None, why not; "" if none saved)."""
  features_path, labels_path, meta_path = _paths(folder, split)
  if not os.path.exists(meta_path):
    leftovers = [path for path in (features_path, labels_path) if os.path.exists(path)]
    return None, (f"{os.path.basename(leftovers[0])} has no metadata: its writing was cut "
                  "short" if leftovers else "")
  try:
    with open(meta_path) as file:
      meta = json.load(file)
    count, shape = int(meta["count"]), tuple(meta["shape"])
    expected = {features_path: meta["features_sha256"], labels_path: meta["labels_sha256"]}
    recorded_settings = meta.get("settings_sha256")
  except (OSError, ValueError, KeyError, TypeError) as error:
    return None, f"{os.path.basename(meta_path)} is unreadable ({type(error).__name__})"
  if recorded_settings != settings_sha256:
    return None, "made with other settings"
  for path, digest in expected.items():
    if not os.path.exists(path):
      return None, f"{os.path.basename(path)} is missing"
    if run_folder.sha256_of(path) != digest:
      return None, f"{os.path.basename(path)} does not match its recorded SHA-256"
  try:
    features = np.load(features_path, mmap_mode="r", allow_pickle=False)
    labels = np.load(labels_path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as error:
    return None, f"it cannot be read ({str(error).splitlines()[0][:120]})"
  if features.shape != shape or labels.shape != (count,) or len(features) != count:
    return None, f"shape {features.shape} and {len(labels)} labels, recorded {shape}"
  return SplitFeatures(_in_memory(features), labels), ""


def remove(folder: str):
  """Deletes a phase's feature folder, and the features folder once empty."""
  shutil.rmtree(folder, ignore_errors=True)
  try:
    os.rmdir(os.path.dirname(folder))
  except OSError:
    pass  # another phase's features are still there


def local_copy(extractor: keras.Model) -> keras.Model:
  """The extractor outside any distribution strategy (same weights).

  Under multi-worker each worker extracts its own share with it, so no
  collective op waits for the other workers.
  """
  with tf.distribute.get_strategy().scope():
    copy = keras.models.clone_model(extractor)
  copy.set_weights(extractor.get_weights())
  return copy


def _in_memory(features: np.ndarray) -> np.ndarray:
  return np.asarray(features) if features.nbytes <= MEMORY_BYTES else features


def _save(path: str, array: np.ndarray):
  run_folder.replace_with(path, lambda temporary: np.save(temporary, array), suffix=".npy",
                          expected_bytes=array.nbytes)
