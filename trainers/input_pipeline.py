"""The input pipeline: pure functions from a TFDS split to batches.

Records are read from the builder's TFRecord files (parsed in batches, only the
features used), filtered on their metadata, balanced, and only then decoded,
straight to the target size with the cheapest exact JPEG path. Nothing here knows about flags or models; nothing is ever
loaded into NumPy except labels and file names for balancing.
"""

import dataclasses
import hashlib
import math
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

AUTOTUNE = tf.data.AUTOTUNE
# The training shuffle buffer holds encoded records (or, with the cache, decoded
# images): as many as fit in this many bytes, between the two counts below.
# A count alone cost the `full` config half its speed: filling 8,192 records of
# 42 kB before the first decode ran it at 1,776 img/s, 1,024 records at 3,680.
SHUFFLE_BUFFER_BYTES = 64 << 20
SHUFFLE_BUFFER = (1024, 8192)
# Serialized records parsed together (vectorised parsing).
PARSE_BATCH = 256


class DatasetNotBuiltError(ValueError):
  """The TFDS dataset is missing from data_dir."""


@dataclasses.dataclass(frozen=True)
class Filters:
  """Keep only records whose original file has these properties (empty: all)."""

  formats: tuple[str, ...] = ()
  modes: tuple[str, ...] = ()
  orientations: tuple[str, ...] = ()


class DamagedDataError(ValueError):
  """A record file of the built dataset is missing or corrupted."""


def builder(dataset: str, data_dir: Optional[str]) -> tfds.core.DatasetBuilder:
  """The prepared builder, or a DatasetNotBuiltError that gives the command."""
  import animals10_tfds  # pylint: disable=g-import-not-at-top,unused-import
  dataset_builder = tfds.builder(dataset, data_dir=data_dir)
  if not dataset_builder.is_prepared():
    raise DatasetNotBuiltError(
        f"{dataset} is not built in {dataset_builder.data_dir}: run "
        f"`{build_command(dataset_builder, data_dir)}` first (from another folder than the "
        "repository root, add --imports animals10_tfds).")
  return dataset_builder


def build_command(dataset_builder, data_dir: Optional[str], overwrite: bool = False) -> str:
  """The `tfds build` command that (re)builds this builder's config."""
  return (f"tfds build animals10_tfds --config={dataset_builder.builder_config.name} "
          f"--manual_dir=DOWNLOAD_DIR --data_dir={data_dir or '~/tensorflow_datasets'}"
          + (" --overwrite" if overwrite else ""))


def damaged(dataset_builder, error: Exception,
            data_dir: Optional[str]) -> Optional[DamagedDataError]:
  """After a read error: the one-line error naming the damaged record file, if any.

  TensorFlow's DataLossError ("corrupted record at 2604452") names no file, so
  every record file of the dataset is read through, CRCs checked, to find it.
  """
  if not isinstance(error, (tf.errors.DataLossError, tf.errors.NotFoundError,
                            tf.errors.OutOfRangeError, tf.errors.InvalidArgumentError)):
    return None
  for split in dataset_builder.info.splits.values():
    for path in split.filepaths:
      path = os.fspath(path)
      if not os.path.exists(path):
        reason = "missing"
      else:
        try:
          for _ in tf.data.TFRecordDataset(path):
            pass
          continue
        except tf.errors.OpError as read_error:
          reason = f"corrupted: {read_error.message.splitlines()[0]}"
      return DamagedDataError(
          f"the record file {path} is {reason}: rebuild the dataset with "
          f"`{build_command(dataset_builder, data_dir, overwrite=True)}`, then run the same "
          "command again; it resumes from the last finished epoch.")
  return None


def records(dataset_builder, split: str, filters: Filters = Filters(),
            keep_names: Optional[Sequence[str]] = None,
            input_context: Optional[tf.distribute.InputContext] = None,
            shard_files: bool = True) -> tf.data.Dataset:
  """Undecoded, filtered records of a split, in a fixed order.

  Args:
    dataset_builder: from `builder`.
    split: "train", "validation" or "test".
    filters: metadata filters, applied before any decoding.
    keep_names: if given, only records whose file_name is in it (balancing).
    input_context: under multi-worker training, this worker's share: whole files
      when `sharding` says so, else every N-th record.
    shard_files: False forces record sharding (equal counts per worker).

  Returns:
    A dataset of record dicts: "image" (the encoded JPEG), "label", "file_name"
    (and the filtered metadata keys).
  """
  workers = input_context.num_input_pipelines if input_context else 1
  by_file = shard_files and sharding(dataset_builder, split, workers) == "file"
  files = [os.fspath(path) for path in dataset_builder.info.splits[split].filepaths]
  if by_file:
    files = files[input_context.input_pipeline_id::workers]
  dataset = tf.data.TFRecordDataset(files)  # the files in order: a fixed record order
  if workers > 1 and not by_file:
    dataset = dataset.shard(workers, input_context.input_pipeline_id)
  # Parse only the features used below, a batch at a time: 200k records/s
  # against 30-40k through `as_dataset` (full-scale 160px, 2 cores), and the
  # parsing shares the cores with decoding.
  serialized = dataset_builder.info.features.get_serialized_info()
  used = ["image", "label", "file_name"] + [
      key for key, allowed in (("format", filters.formats), ("mode", filters.modes),
                               ("orientation", filters.orientations)) if allowed]
  spec = {key: tf.io.FixedLenFeature(
      [], tf.string if serialized[key].tf_dtype == tf.string else tf.int64) for key in used}
  dataset = dataset.batch(PARSE_BATCH).map(
      lambda examples: tf.io.parse_example(examples, spec), num_parallel_calls=AUTOTUNE,
      deterministic=True).unbatch()
  for key, allowed in (("format", filters.formats), ("mode", filters.modes),
                       ("orientation", filters.orientations)):
    if allowed:
      allowed_tensor = tf.constant(list(allowed))
      dataset = dataset.filter(
          lambda record, key=key, allowed=allowed_tensor: tf.reduce_any(
              tf.equal(record[key], allowed)))
  if keep_names is not None:
    # A sorted array of name fingerprints, not a lookup table: a table is a
    # stateful resource, and under --deterministic tf.data then turns the
    # pipeline's parallel maps sequential (TensorFlow logs "NodeDef mentions
    # attribute use_unbounded_threadpool" as it does). Exact: `labels_and_names`
    # checks that a split's names have distinct fingerprints.
    if not len(keep_names):  # pylint: disable=g-explicit-length-test
      return dataset.take(0)
    keys = tf.constant(np.unique(fingerprints(keep_names)), tf.int64)
    dataset = dataset.filter(lambda record: _member(record["file_name"], keys))
  return dataset


def fingerprints(names: Sequence[str]) -> np.ndarray:
  """64-bit fingerprints (TensorFlow's farmhash) of file names, as int64."""
  return tf.bitcast(tf.fingerprint(tf.constant(list(names), tf.string)), tf.int64).numpy()


def _member(name: tf.Tensor, keys: tf.Tensor) -> tf.Tensor:
  key = tf.bitcast(tf.fingerprint(tf.reshape(name, [1])), tf.int64)
  index = tf.minimum(tf.searchsorted(keys, key), tf.size(keys) - 1)
  return tf.equal(tf.gather(keys, index), key)[0]


def sharding(dataset_builder, split: str, workers: int) -> str:
  """How `records` splits a split over `workers` input pipelines.

  "file" (each worker reads only its own TFRecord files) when every worker
  gets the same number of files, or at least 4, so shares differ by 25 % at
  most; else "record": every worker reads all files and keeps every N-th record
  (more reading, no imbalance). "none" for one worker.
  """
  files = dataset_builder.info.splits[split].num_shards
  if workers <= 1:
    return "none"
  return "file" if files % workers == 0 or files >= 4 * workers else "record"


def mean_record_bytes(dataset_builder, split: str = "train") -> float:
  """Mean stored size of a record of `split` (sizes the shuffle buffer)."""
  info = dataset_builder.info.splits[split]
  return info.num_bytes / max(1, info.num_examples)


def labels_and_names(dataset: tf.data.Dataset) -> tuple[np.ndarray, list[str]]:
  """Labels and file names of `records(...)`, without decoding any image."""
  labels, names = [], []
  for label, name in dataset.map(lambda r: (r["label"], r["file_name"]),
                                 num_parallel_calls=AUTOTUNE).as_numpy_iterator():
    labels.append(label)
    names.append(name.decode())
  if names and len(np.unique(fingerprints(names))) != len(set(names)):
    raise RuntimeError("two file names of one split share a 64-bit fingerprint: "
                       "records(keep_names=...) would not be exact; report this data set.")
  return np.asarray(labels, np.int64), names


def undersample(labels: np.ndarray, names: Sequence[str], num_classes: int) -> list[str]:
  """File names that keep every class at the smallest class's count.

  Which files are kept follows a hash of the file name, not the read order, so it
  is the same on every run and every worker.
  """
  counts = np.bincount(labels, minlength=num_classes)
  present = counts[counts > 0]
  smallest = int(present.min()) if present.size else 0
  kept = []
  for label in range(num_classes):
    members = [name for name, value in zip(names, labels) if value == label]
    members.sort(key=lambda name: hashlib.sha256(name.encode()).hexdigest())
    kept.extend(members[:smallest])
  return kept


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
  """Inverse-frequency weights (mean 1 over examples), as scikit-learn's 'balanced'."""
  counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
  weights = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
  return {label: float(weight) for label, weight in enumerate(weights)}


SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class SplitPlan:
  """What a run trains and evaluates on, decided once before any batch is made.

  `keep[split]` is the file names that balancing keeps (None: every record
  that passes the filters); `counts[split]` the records of each split after
  filters and balancing; `steps` the training steps per epoch.
  """

  class_names: tuple[str, ...]
  filters: Filters
  keep: dict  # split -> tuple of file names, or None
  counts: dict  # split -> int
  class_weight: Optional[tuple[float, ...]]
  sharding: str  # of the train split over the workers: see `sharding`
  steps: int
  batch_size: int
  workers: int

  @property
  def worker_batch(self) -> int:
    return self.batch_size // self.workers

  def eval_plan(self, split: str) -> "EvalPlan":
    return EvalPlan(self.counts[split], self.batch_size, self.workers)


def plan(dataset_builder, filters: Filters, balance: str, batch_size: int, workers: int = 1,
         steps_per_epoch: int = 0) -> SplitPlan:
  """Reads every split's labels and names once and plans the run's data.

  Args:
    dataset_builder: from `builder`.
    filters: metadata filters.
    balance: "none", "undersample" (every split cut to its smallest class, as
      the study did) or "class_weight" (inverse-frequency loss weights).
    batch_size: global batch size.
    workers: input pipelines (multi-worker hosts).
    steps_per_epoch: cap on training steps per epoch; 0: one pass.

  Raises:
    ValueError: a split left empty, or a batch larger than the train split.
  """
  class_names = tuple(dataset_builder.info.features["label"].names)
  keep, counts, train_labels = {}, {}, None
  for split in SPLITS:
    labels, names = labels_and_names(records(dataset_builder, split, filters))
    keep[split] = None
    if balance == "undersample":
      keep[split] = tuple(undersample(labels, names, len(class_names)))
      labels = labels[np.isin(names, keep[split])]
    if not len(labels):  # pylint: disable=g-explicit-length-test
      raise ValueError(f"No {split} images left after --keep_formats/--keep_modes/"
                       "--keep_orientations/--balance: loosen the filters.")
    counts[split] = len(labels)
    if split == "train":
      train_labels = labels
  class_weight = None
  if balance == "class_weight":
    weights = class_weights(train_labels, len(class_names))
    class_weight = tuple(weights[label] for label in range(len(class_names)))
  steps = len(train_labels) // batch_size
  if steps == 0:
    raise ValueError(f"--batch_size={batch_size} is larger than the {len(train_labels)} "
                     "training images: lower it.")
  if steps_per_epoch:
    steps = min(steps, steps_per_epoch)
  return SplitPlan(class_names=class_names, filters=filters, keep=keep, counts=counts,
                   class_weight=class_weight,
                   sharding=sharding(dataset_builder, "train", workers), steps=steps,
                   batch_size=batch_size, workers=workers)


def decode_and_resize(image_bytes: tf.Tensor, image_size: int, resize: str) -> tf.Tensor:
  """Decodes a JPEG to image_size x image_size uint8, via DCT scaling when exact.

  libjpeg can decode at 1/2, 1/4 or 1/8 scale for a fraction of the cost; a
  ratio is used only when the scaled image is still at least the target size,
  so no detail the output could show is lost. "crop" decodes only the centre
  square (libjpeg skips the other rows and columns): 1.2-1.3x faster at 160 px.

  Args:
    image_bytes: encoded JPEG.
    image_size: output side.
    resize: "crop" (shorter side to image_size, centre crop, as the study) or
      "stretch" (whole image squeezed to a square).

  Returns:
    uint8 tensor [image_size, image_size, 3].
  """
  shape = tf.image.extract_jpeg_shape(image_bytes)
  shorter = tf.minimum(shape[0], shape[1])
  ratios = (8, 4, 2, 1)

  def decode(ratio):
    if resize != "crop":
      return lambda: tf.io.decode_jpeg(image_bytes, channels=3, ratio=ratio,
                                       dct_method="INTEGER_ACCURATE")
    # The crop window is in the scaled image, whose sides libjpeg rounds up.
    height, width = (shape[0] + ratio - 1) // ratio, (shape[1] + ratio - 1) // ratio
    side = tf.minimum(height, width)
    window = tf.stack([(height - side) // 2, (width - side) // 2, side, side])
    return lambda: tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3, ratio=ratio,
                                              dct_method="INTEGER_ACCURATE")

  fits = [shorter // ratio >= image_size for ratio in ratios[:-1]] + [tf.constant(True)]
  index = tf.argmax(tf.cast(tf.stack(fits), tf.int32), output_type=tf.int32)
  image = tf.switch_case(index, [decode(ratio) for ratio in ratios])
  # Area averaging is an exact box filter when shrinking and 2.5x faster here
  # than antialiased bilinear (8,300 vs 3,700 img/s at 160 -> 100 px on 2
  # cores); it only degrades when enlarging, where bilinear takes over.
  shrinking = tf.minimum(tf.shape(image)[0], tf.shape(image)[1]) >= image_size
  image = tf.cond(
      shrinking,
      lambda: tf.image.resize(image, (image_size, image_size), method="area"),
      lambda: tf.image.resize(image, (image_size, image_size), method="bilinear"))
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def images(dataset: tf.data.Dataset, image_size: int, resize: str) -> tf.data.Dataset:
  """(uint8 image, label) pairs from `records(...)`."""
  return dataset.map(
      lambda record: (decode_and_resize(record["image"], image_size, resize),
                      record["label"]), num_parallel_calls=AUTOTUNE)


def _to_float(image, *rest):
  return (tf.cast(image, tf.float32), *rest)


@dataclasses.dataclass(frozen=True)
class TrainingStream:
  """How the training split becomes batches (see `training_batches`).

  Attributes:
    batch_size: images per step read by this pipeline (the global batch, or
      this worker's share of it).
    steps_per_epoch: batches per epoch.
    epochs: total epochs.
    first_epoch: epoch to start from (resume).
    seed: run seed.
    image_size: output side.
    resize: see `decode_and_resize`.
    cache_decoded: decode once and keep the uint8 images in memory.
    deterministic: keep element order fixed in parallel stages.
    class_weight: a loss weight per class: adds a sample-weight batch.
    replica_batch_size: split every batch into pieces of this size (several
      replicas fed by one pipeline, as `distribute_datasets_from_function` wants).
    record_bytes: mean size of a record (`mean_record_bytes`), to size the
      shuffle buffer; None: the largest buffer.
  """

  batch_size: int
  steps_per_epoch: int
  epochs: int
  first_epoch: int = 0
  seed: int = 0
  image_size: int = 100
  resize: str = "crop"
  cache_decoded: bool = False
  deterministic: bool = False
  class_weight: Optional[tuple[float, ...]] = None
  replica_batch_size: Optional[int] = None
  record_bytes: Optional[float] = None

  def shuffle_buffer(self) -> int:
    """Elements in the shuffle buffer: as many as fit in SHUFFLE_BUFFER_BYTES.

    The same for records and for their cached features, so both streams visit
    the training split in the same order.
    """
    element_bytes = (self.image_size * self.image_size * 3 if self.cache_decoded
                     else self.record_bytes)
    if not element_bytes:
      return SHUFFLE_BUFFER[1]
    return int(min(max(SHUFFLE_BUFFER_BYTES // element_bytes, SHUFFLE_BUFFER[0]),
                   SHUFFLE_BUFFER[1]))


def training_batches(dataset: tf.data.Dataset, stream: TrainingStream,
                     decoded: bool = False) -> tf.data.Dataset:
  """Batches for epochs [first_epoch, epochs), `steps_per_epoch` each.

  One seeded stream of reshuffled passes feeds every epoch, so an epoch shorter
  than a pass continues where the last one stopped, and a run resumed at epoch
  k skips the records the first k epochs used (cheap: they are not decoded)
  and then sees exactly the batches an uninterrupted run would.

  Args:
    dataset: `records(...)` of the training split; or, with `decoded`, (input,
      label) pairs that need no decoding (cached backbone features), in the
      records' order: they are then visited in exactly the records' order.
    stream: batching, shuffling and decoding settings.
    decoded: see `dataset`.

  Returns:
    A dataset of (float32 input batch, label batch[, weight batch]); images are
    in [0, 255].
  """
  elements = dataset
  if stream.cache_decoded and not decoded:
    elements = images(dataset, stream.image_size, stream.resize).cache()
  elements = elements.shuffle(stream.shuffle_buffer(), seed=stream.seed,
                              reshuffle_each_iteration=True).repeat()
  elements = elements.skip(stream.first_epoch * stream.steps_per_epoch * stream.batch_size)
  if not stream.cache_decoded and not decoded:
    elements = images(elements, stream.image_size, stream.resize)
  batches = elements.batch(stream.batch_size, drop_remainder=True)
  batches = batches.take(max(0, stream.epochs - stream.first_epoch) * stream.steps_per_epoch)
  if stream.class_weight is not None:
    weights = tf.constant(stream.class_weight, tf.float32)
    batches = batches.map(lambda image, label: (image, label, tf.gather(weights, label)))
  if stream.replica_batch_size and stream.replica_batch_size != stream.batch_size:
    batches = batches.rebatch(stream.replica_batch_size, drop_remainder=True)
  return _finish(batches.map(_to_float, num_parallel_calls=AUTOTUNE), stream.deterministic)


@dataclasses.dataclass(frozen=True)
class EvalPlan:
  """Exact evaluation of a split with every batch full (big_vision's padding).

  Replicas split each batch evenly, so a last batch of 1 image on 2 replicas
  (one replica with no image) or of 33 (17/16) would crash a mirrored
  evaluation. So the records are followed by masked padding examples up to
  `steps` full batches. Records carry the sample weight `weight`, padding 0:
  Keras's weighted metrics then count each record once, and its loss tracker,
  which divides by every example of a batch, padding included, gets
  sum(loss) * weight / padded = sum(loss) / records: the exact mean.

  Attributes:
    count: records in the whole split (all workers).
    batch_size: global batch size.
    workers: input pipelines; each reads every `workers`-th record.
  """

  count: int
  batch_size: int
  workers: int = 1

  @property
  def worker_batch(self) -> int:
    return self.batch_size // self.workers

  @property
  def steps(self) -> int:
    """Batches every worker runs: enough for the largest share."""
    return max(1, math.ceil(math.ceil(self.count / self.workers) / self.worker_batch))

  @property
  def weight(self) -> float:
    """Sample weight of a record: padded examples over records, all workers."""
    return self.steps * self.batch_size / max(1, self.count)

  def share(self, worker: int) -> int:
    """Records of worker `worker` (`tf.data.Dataset.shard` takes every N-th)."""
    return len(range(worker, self.count, self.workers))


def eval_batches(dataset: tf.data.Dataset, plan: EvalPlan, *, image_size: int = 0,
                 resize: str = "crop", cache_decoded: bool = False, worker: int = 0,
                 replica_batch_size: Optional[int] = None,
                 decoded: bool = False) -> tf.data.Dataset:
  """Full, padded batches of a split in its fixed order (see `EvalPlan`).

  Args:
    dataset: `records(...)` of the split (this worker's share under
      multi-worker), or (input, label) pairs with `decoded`.
    plan: the split's `EvalPlan`.
    image_size: output side (records only).
    resize: see `decode_and_resize`.
    cache_decoded: keep the decoded records in memory after the first pass.
    worker: this pipeline's index.
    replica_batch_size: batch of one replica when one pipeline feeds several
      (`distribute_datasets_from_function`); default this worker's batch.
    decoded: see `dataset`.

  Returns:
    (float32 inputs, label, weight) batches: `plan.steps` batches of this
    worker's records then padding; the first `plan.share(worker)` examples in
    order are the records.
  """
  elements = dataset if decoded else images(dataset, image_size, resize)
  if cache_decoded:
    elements = elements.cache()
  weight = tf.constant(plan.weight, tf.float32)
  elements = elements.map(lambda inputs, label: (inputs, label, weight))
  padding = tf.data.Dataset.from_tensors(tuple(
      tf.zeros(spec.shape, spec.dtype) for spec in elements.element_spec)).repeat()
  total = plan.steps * plan.worker_batch
  batches = elements.concatenate(padding).take(total).batch(
      replica_batch_size or plan.worker_batch, drop_remainder=True)
  return _finish(batches.map(_to_float), deterministic=True)


def _finish(dataset: tf.data.Dataset, deterministic: bool) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = deterministic
  return dataset.with_options(options).prefetch(AUTOTUNE)
