"""Activations of a frozen backbone, computed once per split instead of once per epoch.

Where a transfer model's backbone (or its bottom) is frozen, runs in inference
mode, and sees the same images every epoch (no augmentation), its output never
changes. So the trainer runs the model up to there once over each split
(through the same decode path), keeps the activations, and trains the rest on
them:

- the frozen phase caches the pooled features and trains the head alone
  (measured on 2 cores at 100 px: mnv2's frozen phase 240 img/s end to end,
  5,600 img/s for the head);
- the fine-tuning phase caches the tensors crossing from the frozen bottom to
  the unfrozen top (`cutting.split_at_cut`: one tensor for MobileNetV2, two for
  EfficientNetV2B3) and trains the top and the head on them.

Each split is saved in the run folder as soon as it is done
(`features/<phase>/<split>.features[.<i>].npy`, one per tensor, and
`.labels.npy`, then `.meta.json` with their SHA-256, count, shapes and the run's
settings hash, written last), so a killed run resumes without extracting a
finished split again, and a damaged or foreign file is never trained on; they
are deleted when the phase is done. Arrays larger than `MEMORY_BYTES` stay
memory-mapped: the streams read a batch of rows at a time.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from trainers.data import input_pipeline
from trainers.data import records as records_lib
from trainers.data import split_plan
from trainers.modeling import models
from trainers.runs import run_folder
from trainers.runs import run_paths

# A split's cached arrays up to this size are read into memory; larger ones stay
# memory-mapped (enb3's fine-tuning cut of the study's split at 100 px: 1.2 GB).
MEMORY_BYTES = 512 << 20
# Output held in memory at once while extracting (then written to the files).
CHUNK_BYTES = 256 << 20


def reason_not_cached(config, images_trained: int, train_images: int) -> Optional[str]:
  """Why a phase trains end to end; None when its frozen part's output can be cached
  (for fine-tuning, whether the backbone can be cut is `cutting.split_at_cut`'s
  to say).

  Args:
    config: the run's `Config`.
    images_trained: images the phase will train on (epochs x steps x batch).
    train_images: images of one full epoch of the train split (whole batches).
  """
  if not config.cache_features:
    return "--nocache_features"
  if models.REGISTRY[config.model].backbone is None:
    return f"{config.model} has no frozen backbone"
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
  """One split's cached activations (a tuple of arrays, one per tensor of the cut)
  and labels, in the order of its records.

  The streams read them by index (`indexed`, then `lookup` on each batch of
  indices): shuffling indices visits the rows in exactly the order a shuffle of
  the records would, and only a batch of rows is in memory at a time when the
  arrays are memory-mapped.
  """

  def __init__(self, arrays, labels: np.ndarray):
    self.arrays = tuple(arrays) if isinstance(arrays, (tuple, list)) else (arrays,)
    self.labels = labels

  @property
  def features(self) -> np.ndarray:
    """The one array of a single-tensor cut (the pooled features)."""
    if len(self.arrays) != 1:
      raise ValueError(f"these cached activations hold {len(self.arrays)} tensors, not one")
    return self.arrays[0]

  def __len__(self):
    return len(self.labels)

  def indexed(self) -> tf.data.Dataset:
    """(int64 row index, int64 label) pairs in record order."""
    return tf.data.Dataset.from_tensor_slices(
        (np.arange(len(self.labels), dtype=np.int64), np.asarray(self.labels, np.int64)))

  # Not converted by AutoGraph (it is a NumPy call): in a long process, AutoGraph's
  # cache of converted functions was seen to hand this call another function's
  # conversion ("tf__indexed() takes 1 positional argument but 2 were given").
  @tf.autograph.experimental.do_not_convert
  def lookup(self, indices: tf.Tensor):
    """The rows `indices` (a batch) of every array: a float32 tensor, or a tuple of
    them for a cut of several tensors."""
    arrays = self.arrays

    def rows(batch):
      return tuple(np.asarray(array[batch], np.float32) for array in arrays)
    found = tf.numpy_function(rows, [indices], [tf.float32] * len(arrays), stateful=False)
    for tensor, array in zip(found, arrays):
      tensor.set_shape([indices.shape[0], *array.shape[1:]])
    return found[0] if len(found) == 1 else tuple(found)


def extract(extractor: keras.Model, records: tf.data.Dataset, *, folder: str, split: str,
            batch_size: int, image_size: int, resize: str,
            settings_sha256: Optional[str] = None) -> SplitFeatures:
  """The extractor's outputs on `records`, from `folder` if a previous process saved them.

  Saved activations are used only when their metadata (written last) vouches
  for them: the SHA-256 of every file, the count and shapes, and the settings
  hash of the run that made them. Anything else (a kill mid-write, a damaged or
  swapped file) is said in one line, and the split is extracted again.

  The split is predicted in chunks of about `CHUNK_BYTES` of output, each
  written straight into memory-mapped files, so a cut of a large split never
  sits in memory whole.

  Args:
    extractor: images to the cached tensors: the pooled features
      (`cutting.split_at_pool`) or the tensors crossing a fine-tuning cut
      (`cutting.split_at_cut`).
    records: `records_lib.records(...)` of the split (this worker's share).
    folder: where the split's files are kept.
    split: the split's name.
    batch_size: images per prediction batch (divisible by the replicas).
    image_size: the model's input side.
    resize: see `input_pipeline.decode_and_resize`.
    settings_sha256: the run's `settings.settings_sha256`, recorded with the files.

  Returns:
    The split's `SplitFeatures`, in the order of `records`.
  """
  shapes = [tuple(output.shape[1:]) for output in extractor.outputs]
  if os.path.lexists(folder) and not os.path.isdir(folder):
    raise ValueError(f"{folder} is a file where the cached activations belong: move it away "
                     "and run the same command again.")
  labels, names = records_lib.labels_and_names(records)
  # Which records the rows are of: a split's files copied over another's are caught.
  records_sha256 = hashlib.sha256("\n".join(names).encode()).hexdigest()
  saved, problem = _load_saved(folder, split, settings_sha256, len(shapes), records_sha256)
  if saved is not None:
    return saved
  if problem:
    print(f"info: cached features of {split} in {folder} cannot be used ({problem}); "
          "extracting them again.", flush=True)
  paths = _paths(folder, split, len(shapes))
  _write_arrays(paths.arrays, shapes, len(labels), lambda arrays: _predict_into(
      arrays, extractor, records, split=split, batch_size=batch_size, image_size=image_size,
      resize=resize))
  run_folder.replace_with(paths.labels, lambda temporary: np.save(temporary, labels),
                          suffix=".npy")
  run_folder.write_json(paths.meta, {  # last: vouches for the other files
      "count": len(labels), "shapes": [list(shape) for shape in shapes], "dtype": "float32",
      "features_sha256": [run_folder.sha256_of(path) for path in paths.arrays],
      "labels_sha256": run_folder.sha256_of(paths.labels),
      run_paths.SETTINGS_KEY: settings_sha256, "split": split, "records_sha256": records_sha256})
  return SplitFeatures([_in_memory(np.load(path, mmap_mode="r")) for path in paths.arrays],
                       labels)


def _write_arrays(destinations: list[str], shapes: list[tuple], count: int, fill):
  """Memory-mapped float32 .npy files of `count` rows, filled by `fill(arrays)` under
  temporary names and renamed into place only once whole (removed on any failure).

  `run_folder.replace_with` writes one file from one call; these are filled
  together, chunk by chunk, so they get the same rule here.
  """
  image_bytes = sum(4 * int(np.prod(shape)) for shape in shapes)
  temporaries = _temporaries(destinations, count * image_bytes)
  try:
    arrays = [np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float32,
                                        shape=(count, *shape))
              for temporary, shape in zip(temporaries, shapes)]
    fill(arrays)
    for array in arrays:
      array.flush()
    del arrays
    for temporary, path in zip(temporaries, destinations):
      os.chmod(temporary, run_folder.file_mode())
      os.replace(temporary, path)
  except BaseException as error:
    for temporary in temporaries:
      if os.path.exists(temporary):
        os.remove(temporary)
    if run_folder.is_disk_full(error):
      raise run_folder.NoSpaceLeft(destinations[0]) from None
    raise


def _predict_into(arrays: list, extractor: keras.Model, records: tf.data.Dataset, *,
                  split: str, batch_size: int, image_size: int, resize: str):
  """The extractor's outputs on `records`, written into `arrays` chunk by chunk (about
  `CHUNK_BYTES` of output each), so a large split never sits in memory whole."""
  count = len(arrays[0])
  image_bytes = sum(4 * int(np.prod(array.shape[1:])) for array in arrays)
  chunk = max(1, CHUNK_BYTES // (image_bytes * batch_size)) * batch_size
  for start in range(0, count, chunk):
    size = min(chunk, count - start)
    plan = split_plan.EvalPlan(count=size, batch_size=batch_size)
    batches = input_pipeline.eval_batches(records.skip(start).take(size), plan,
                                          image_size=image_size, resize=resize)
    predicted = extractor.predict(batches, verbose=0)
    predicted = predicted if isinstance(predicted, (list, tuple)) else [predicted]
    for array, values in zip(arrays, predicted):
      if len(values) < size:
        raise RuntimeError(f"feature extraction of {split} gave {len(values)} rows for "
                           f"{size} records")
      array[start:start + size] = values[:size]


@dataclasses.dataclass(frozen=True)
class _SplitPaths:
  arrays: tuple[str, ...]
  labels: str
  meta: str


def _paths(folder: str, split: str, tensors: int) -> _SplitPaths:
  """<split>.features.npy for the first tensor, <split>.features.<i>.npy for the others."""
  arrays = tuple(os.path.join(folder, f"{split}.features{'' if index == 0 else f'.{index}'}.npy")
                 for index in range(tensors))
  return _SplitPaths(arrays, os.path.join(folder, f"{split}.labels.npy"),
                     os.path.join(folder, f"{split}.meta.json"))


def _temporaries(paths: tuple[str, ...], expected_bytes: int) -> list[str]:
  """Empty temporary files beside `paths` (a killed extraction's are removed first)."""
  directory = os.path.dirname(os.path.abspath(paths[0]))
  try:
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
      if name.startswith(".tmp-") and name.endswith(".features.npy"):
        os.remove(os.path.join(directory, name))
    if shutil.disk_usage(directory).free < expected_bytes + (1 << 20):
      raise run_folder.NoSpaceLeft(paths[0])
    temporaries = []
    for _ in paths:
      handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-",
                                           suffix=".features.npy")
      os.close(handle)
      temporaries.append(temporary)
    return temporaries
  except OSError as error:
    if run_folder.is_disk_full(error):
      raise run_folder.NoSpaceLeft(paths[0]) from None
    if isinstance(error, (FileExistsError, NotADirectoryError)):
      raise ValueError(f"{directory} cannot be made ({error.strerror}): a file stands in its "
                       "path; move it away and run the same command again.") from None
    raise


def _load_saved(folder: str, split: str, settings_sha256: Optional[str], tensors: int,
                records_sha256: str) -> tuple[Optional[SplitFeatures], str]:
  """(features, "") when the saved split checks out, else (None, why not; "" if none saved)."""
  paths = _paths(folder, split, tensors)
  if not os.path.exists(paths.meta):
    leftovers = [path for path in (*paths.arrays, paths.labels) if os.path.exists(path)]
    return None, (f"{os.path.basename(leftovers[0])} has no metadata: its writing was cut "
                  "short" if leftovers else "")
  try:
    with open(paths.meta) as file:
      meta = json.load(file)
    count, shapes = int(meta["count"]), [tuple(shape) for shape in meta["shapes"]]
    expected = dict(zip(paths.arrays, meta["features_sha256"]))
    expected[paths.labels] = meta["labels_sha256"]
    recorded_settings = meta.get(run_paths.SETTINGS_KEY)
  except (OSError, ValueError, KeyError, TypeError) as error:
    return None, f"{os.path.basename(paths.meta)} is unreadable ({type(error).__name__})"
  if recorded_settings != settings_sha256:
    return None, "made with other settings"
  if meta.get("split") != split or meta.get("records_sha256") != records_sha256:
    return None, (f"they are of the {meta.get('split')} split's records, not these "
                  f"{split} records")
  if len(shapes) != tensors or len(expected) != tensors + 1:
    return None, f"it holds {len(shapes)} tensors, this cut {tensors}"
  for path, digest in expected.items():
    if not os.path.exists(path):
      return None, f"{os.path.basename(path)} is missing"
    if run_folder.sha256_of(path) != digest:
      return None, f"{os.path.basename(path)} does not match its recorded SHA-256"
  try:
    arrays = [np.load(path, mmap_mode="r", allow_pickle=False) for path in paths.arrays]
    labels = np.load(paths.labels, allow_pickle=False)
  except (OSError, ValueError, EOFError) as error:
    return None, f"it cannot be read ({str(error).splitlines()[0][:120]})"
  found = [array.shape for array in arrays]
  if found != [(count, *shape) for shape in shapes] or labels.shape != (count,):
    return None, f"shapes {found} and {len(labels)} labels, recorded {count} of {shapes}"
  return SplitFeatures([_in_memory(array) for array in arrays], labels), ""


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


def _in_memory(array: np.ndarray) -> np.ndarray:
  return np.asarray(array) if array.nbytes <= MEMORY_BYTES else array
