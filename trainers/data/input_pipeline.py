"""The input pipeline's streams: pure functions from records to decoded batches.

Records come from `trainers.data.records` (filtered, undecoded) as `trainers.data.split_plan`
planned them; here they are shuffled still encoded with a seed per epoch, batched,
decoded a batch at a time straight to the target size with the cheapest exact JPEG
path (evaluation: image by image, padded to full batches) and prefetched. Nothing
here knows about flags or models; nothing is loaded into NumPy.

Image batches leave as uint8 (MixUp/CutMix batches as float32, their pixels being
blends): the model casts them to float32 at its input (a Functional model converts
its inputs to its `keras.Input`'s dtype), on the accelerator when there is one. A
float32 batch is four times the bytes to copy between tf.data's stages and to the
device: casting here cost the first epoch 5-10 % of its throughput
(tools.bench_input, docs/performance.md).
"""

import dataclasses
from typing import Callable, Optional

import keras
import tensorflow as tf

from trainers.data import split_plan

AUTOTUNE = tf.data.AUTOTUNE
# The training shuffle buffer holds encoded records (or, with the cache, decoded
# images): as many as fit in this many bytes, between the two counts below.
# A count alone cost the `full` config half its speed: filling 8,192 records of
# 42 kB before the first decode ran it at 1,776 img/s, 1,024 records at 3,680.
SHUFFLE_BUFFER_BYTES = 64 << 20
SHUFFLE_BUFFER = (1024, 8192)


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
  return _resized(tf.switch_case(index, [decode(ratio) for ratio in ratios]), image_size)


def decode_any_and_resize(image_bytes: tf.Tensor, image_size: int, resize: str) -> tf.Tensor:
  """`decode_and_resize` for any encoded image `tf.io.decode_image` reads.

  JPEG takes `decode_and_resize`'s path; PNG, GIF (first frame), BMP and WebP
  are decoded whole to RGB as the dataset builder converts them (grayscale to
  three equal channels, transparency composited onto white), centre-cropped as
  "crop" says, and resized the same way.
  """
  def other():
    image = tf.io.decode_image(image_bytes, expand_animations=False)
    image.set_shape([None, None, None])
    pixels = tf.cast(image, tf.float32)

    def on_white(rgb, alpha):
      return rgb * (alpha / 255) + 255 * (1 - alpha / 255)
    pixels = tf.switch_case(tf.shape(image)[2] - 1, [
        lambda: tf.tile(pixels[..., :1], [1, 1, 3]),
        lambda: on_white(tf.tile(pixels[..., :1], [1, 1, 3]), pixels[..., 1:2]),
        lambda: pixels[..., :3],
        lambda: on_white(pixels[..., :3], pixels[..., 3:4])])
    image = tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), tf.uint8)
    if resize == "crop":
      height, width = tf.shape(image)[0], tf.shape(image)[1]
      side = tf.minimum(height, width)
      image = tf.image.crop_to_bounding_box(image, (height - side) // 2, (width - side) // 2,
                                            side, side)
    return _resized(image, image_size)
  return tf.cond(tf.io.is_jpeg(image_bytes),
                 lambda: decode_and_resize(image_bytes, image_size, resize), other)


def _resized(image: tf.Tensor, image_size: int) -> tf.Tensor:
  """A decoded uint8 image squeezed to image_size x image_size."""
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


# Images of one batch a decode_batch map decodes at a time.
PARALLEL_DECODES = 16


def decode_batch(image_bytes: tf.Tensor, image_size: int, resize: str) -> tf.Tensor:
  """`decode_and_resize` of a batch of encoded JPEGs, in order, as one map's element
  (uint8 [batch, image_size, image_size, 3]).

  The training stream decodes after batching: one map call per batch instead of one
  per image spares tf.data a hand-off per image, which took 6-9 % of a first epoch
  from the two cores that decode (tools.bench_input, docs/performance.md).
  """
  return tf.map_fn(lambda data: decode_and_resize(data, image_size, resize),
                   image_bytes, parallel_iterations=PARALLEL_DECODES,
                   fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8))


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
    pass_records: records in one pass over the split (at most), to cap the
      shuffle buffer; None: no cap.
    mixup: MixUp's alpha (0: off); labels become class distributions.
    cutmix: CutMix's alpha (0: off); with mixup, each batch takes one of the two.
    num_classes: the depth of those distributions.
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
  pass_records: Optional[int] = None
  mixup: float = 0.0
  cutmix: float = 0.0
  num_classes: int = 10

  def shuffle_buffer(self) -> int:
    """Elements in the shuffle buffer: as many as fit in SHUFFLE_BUFFER_BYTES, and no
    more than one pass holds.

    The same for records and for their cached features, so both streams visit
    the training split in the same order. A buffer larger than a pass gives the
    same order (the repeated shuffle keeps its passes apart; tested) but fills with
    the next passes' records before the first one comes out: 2.5 passes of a
    2,134-record split, 84 ms against 38 ms, before any decoding began.
    """
    element_bytes = (self.image_size * self.image_size * 3 if self.cache_decoded
                     else self.record_bytes)
    size = (SHUFFLE_BUFFER[1] if not element_bytes else
            int(min(max(SHUFFLE_BUFFER_BYTES // element_bytes, SHUFFLE_BUFFER[0]),
                    SHUFFLE_BUFFER[1])))
    return max(1, min(size, self.pass_records)) if self.pass_records else size


def training_batches(records: tf.data.Dataset, stream: TrainingStream) -> tf.data.Dataset:
  """Batches of decoded images for epochs [first_epoch, epochs), `steps_per_epoch` each.

  One seeded stream of reshuffled passes feeds every epoch, so an epoch shorter
  than a pass continues where the last one stopped, and a run resumed at epoch
  k skips the records the first k epochs used (cheap: they are not decoded)
  and then sees exactly the batches an uninterrupted run would.

  Args:
    records: `records.records(...)` of the training split.
    stream: batching, shuffling and decoding settings.

  Returns:
    A dataset of (uint8 image batch, label batch[, weight batch]); with MixUp or
    CutMix, float32 images in [0, 255] and label distributions.
  """
  return _training(records, stream, decode=True)


def feature_training_batches(indexed: tf.data.Dataset, lookup: Callable,
                             stream: TrainingStream) -> tf.data.Dataset:
  """`training_batches` of cached activations that need no decoding.

  Args:
    indexed: (row index, label) pairs of the cached rows, in the records' order.
    lookup: a batch of row indices to the rows (a tensor or a tuple of them).
    stream: as for `training_batches`.

  Returns:
    The same shuffling and batches as `training_batches`, so the model's top sees
    exactly the examples the whole model would.
  """
  return _training(indexed, stream, decode=False, lookup=lookup)


def _training(elements: tf.data.Dataset, stream: TrainingStream, decode: bool,
              lookup: Optional[Callable] = None) -> tf.data.Dataset:
  """The shared body of `training_batches` and `feature_training_batches`."""
  if stream.cache_decoded and decode:
    elements = images(elements, stream.image_size, stream.resize).cache()
  elements = elements.shuffle(stream.shuffle_buffer(), seed=stream.seed,
                              reshuffle_each_iteration=True).repeat()
  elements = elements.skip(stream.first_epoch * stream.steps_per_epoch * stream.batch_size)
  batches = elements.batch(stream.batch_size, drop_remainder=True)
  batches = batches.take(max(0, stream.epochs - stream.first_epoch) * stream.steps_per_epoch)
  if not stream.cache_decoded and decode:
    batches = batches.map(lambda records: (
        decode_batch(records["image"], stream.image_size, stream.resize),
        records["label"]), num_parallel_calls=AUTOTUNE)
  if lookup is not None:
    batches = batches.map(lambda indices, label: (lookup(indices), label))
  if stream.class_weight is not None:
    weights = tf.constant(stream.class_weight, tf.float32)
    batches = batches.map(lambda image, label: (image, label, tf.gather(weights, label)))
  if stream.mixup or stream.cutmix:
    batches = _mixed(batches, stream)
  if stream.replica_batch_size and stream.replica_batch_size != stream.batch_size:
    batches = batches.rebatch(stream.replica_batch_size, drop_remainder=True)
  return _finish(batches, stream.deterministic)


# Seed-generator draws a batch may use: each batch's draws start at its index
# times this, so no two batches share one.
_DRAWS_PER_BATCH = 1000


def _mixed(batches: tf.data.Dataset, stream: TrainingStream) -> tf.data.Dataset:
  """Batches mixed by Keras's MixUp or CutMix, labels one-hot then mixed.

  The mixing runs in float32 under every precision policy, so a batch is mixed
  identically under float32, mixed_bfloat16 and mixed_float16.
  Each batch's randomness is keyed by the run's seed and the batch's index in the
  whole run (the layer's seed generator is set to it before the call, in a
  sequential map), so a resumed run mixes exactly as an uninterrupted one did.
  A mixed example keeps the class weight of the image it is mixed into.
  """
  # Mixed in float32 whatever the run's policy: the layers would otherwise take the
  # global mixed policy's compute dtype and mix bf16/fp16 images with float32 draws
  # (a dtype error), and the images stay float32 until the model casts them.
  layers = []
  if stream.mixup:
    layers.append(keras.layers.MixUp(alpha=stream.mixup, dtype="float32"))
  if stream.cutmix:
    layers.append(keras.layers.CutMix(factor=stream.cutmix, dtype="float32"))

  def mix(index, batch):
    images, labels, *weights = batch
    images = tf.cast(images, tf.float32)
    labels = tf.one_hot(labels, stream.num_classes)

    def mixed_by(layer):
      def run():
        state = layer.generator.state
        state.assign(tf.stack([tf.cast(stream.seed, state.dtype),
                               tf.cast(index, state.dtype) * _DRAWS_PER_BATCH]))
        mixed = layer({"images": images, "labels": labels}, training=True)
        return tf.cast(mixed["images"], tf.float32), tf.cast(mixed["labels"], tf.float32)
      return run
    choice = tf.random.stateless_uniform([], seed=tf.stack([tf.cast(stream.seed, tf.int64),
                                                             index]),
                                         maxval=len(layers), dtype=tf.int32)
    images, labels = tf.switch_case(choice, [mixed_by(layer) for layer in layers])
    return (images, labels, *weights)
  first = stream.first_epoch * stream.steps_per_epoch
  return batches.enumerate(start=first).map(mix)


def eval_batches(records: tf.data.Dataset, plan: split_plan.EvalPlan, *, image_size: int,
                 resize: str = "crop", cache_decoded: bool = False,
                 replica_batch_size: Optional[int] = None) -> tf.data.Dataset:
  """Full, padded batches of a split's decoded images in its fixed order (see `EvalPlan`).

  Args:
    records: `records.records(...)` of the split (this worker's share under
      multi-worker).
    plan: the split's `EvalPlan`.
    image_size: output side.
    resize: see `decode_and_resize`.
    cache_decoded: keep the decoded records in memory after the first pass.
    replica_batch_size: batch of one replica when one pipeline feeds several
      (`distribute_datasets_from_function`); default this worker's batch.

  Returns:
    (uint8 images, label, weight) batches: `plan.steps` batches of this
    worker's records then padding; the first `plan.share(worker)` examples in
    order are the records (every worker runs the same number of batches).
  """
  decoded = images(records, image_size, resize)
  return _padded(decoded.cache() if cache_decoded else decoded, plan, replica_batch_size)


def feature_eval_batches(indexed: tf.data.Dataset, lookup: Callable,
                         plan: split_plan.EvalPlan, *,
                         replica_batch_size: Optional[int] = None) -> tf.data.Dataset:
  """`eval_batches` of cached activations: `indexed` and `lookup` as for
  `feature_training_batches` (padding looks up row 0, at weight 0)."""
  return _padded(indexed, plan, replica_batch_size, lookup)


def _padded(elements: tf.data.Dataset, plan: split_plan.EvalPlan,
            replica_batch_size: Optional[int],
            lookup: Optional[Callable] = None) -> tf.data.Dataset:
  """Weighted examples, then weight-0 padding, in `plan.steps` full batches."""
  weight = tf.constant(plan.weight, tf.float32)
  elements = elements.map(lambda inputs, label: (inputs, label, weight))
  padding = tf.data.Dataset.from_tensors(tuple(
      tf.zeros(spec.shape, spec.dtype) for spec in elements.element_spec)).repeat()
  total = plan.steps * plan.worker_batch
  batches = elements.concatenate(padding).take(total).batch(
      replica_batch_size or plan.worker_batch, drop_remainder=True)
  if lookup is not None:
    batches = batches.map(lambda indices, label, weights: (lookup(indices), label, weights))
  return _finish(batches, deterministic=True)


def stream_options(deterministic: bool) -> tf.data.Options:
  """The tf.data options of every stream here.

  tf.data's model-based autotuning is off: AUTOTUNE parallelism is then the cores
  the runner has, at most 16 (tf.data's own starting value). On 2 cores the
  autotuner cost a third of the throughput in a random 20-60 % of epochs (3,100
  img/s against 4,300 for the same decode, and 1,600 against 2,500 for `full`),
  which no choice of fixed parallelism avoided while it ran; off, every epoch ran
  at the higher rate (tools.bench_input, docs/performance.md).
  """
  options = tf.data.Options()
  options.deterministic = deterministic
  options.autotune.enabled = False
  return options


def _finish(dataset: tf.data.Dataset, deterministic: bool) -> tf.data.Dataset:
  return dataset.with_options(stream_options(deterministic)).prefetch(AUTOTUNE)
