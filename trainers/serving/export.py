r"""Exports a trained run as a SavedModel or a TFLite file, and measures what it lost.

    python -m trainers.export --model_dir=work/runs/cnn2 --format=saved_model|tflite \
        [--quantize=none|dynamic|float16|int8] [--io=uint8|float32] \
        [--calibration_images=200] [--max_accuracy_drop=X] [--out=PATH]

The export starts from a float32 copy of the run's model (mixed-precision layers
do not convert to TFLite). TFLite files can be quantized after training
(`trainers.serving.tflite_file`): int8 is calibrated on --calibration_images images of
the run's train split (seeded), decoded as in training, and takes uint8 pixels
by default. The SavedModel has two signatures: `serving_default` takes encoded
images of any format `tf.io.decode_image` reads (JPEG, PNG, GIF, BMP, WebP),
decoded, cropped and resized as in training; `serve_images` takes uint8 images
at the run's size.

Every export is measured on the run's whole test split against the Keras model
before it is written: its test accuracy next to the Keras model's, top-1
agreement, the largest probability difference, and latency per image on this
CPU (1 thread and all threads, exported and Keras). An accuracy drop past
--max_accuracy_drop (default 0.01 for none and float16, 0.02 for dynamic and
int8), or for an unquantized export a probability difference past --tolerance,
fails it: it is written under a temporary name and only takes --out's place
once it passes. A previous export at --out stays.

Every export gets a report beside it, `<out>.json` (these figures, bytes,
SHA-256 or file list, and what `trainers.predict --model=` needs). It is also
the export's marker: an existing --out is replaced only when its report shows
it is an unchanged export of ours; anything else at --out (a run folder, a
user's files) is refused and left untouched.

EXIF orientation: `serving_default` decodes the bytes it is given as stored.
TensorFlow's decoders ignore the EXIF orientation tag and have no op that reads
it, so a client sends upright pixels, as the dataset builder and
`trainers.predict` make them (both rotate by EXIF with Pillow).
"""

import os
import shutil
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from animals10_tfds import source
from trainers import config as config_lib
from trainers.runs import settings as settings_lib
from trainers.serving import export_report
from trainers.data import input_pipeline
from trainers.data import dataset as dataset_lib
from trainers.data import records as records_lib
from trainers.serving import keras_latency
from trainers.modeling import models
from trainers.evaluation import results
from trainers.runs import run_folder
from trainers.runs import run_paths
from trainers.data import split_plan
from trainers.serving import tflite_file

FORMATS = ("saved_model", "tflite")


def float32_model(config: config_lib.Config) -> keras.Model:
  """The run's model rebuilt under the float32 policy, with its trained weights."""
  trained = keras.saving.load_model(run_paths.RunPaths(config.model_dir).model, safe_mode=True)
  keras.mixed_precision.set_global_policy("float32")
  model = models.build_model(config.model, config.image_size, head_units=config.head_units,
                             augment=config.augment, weights=None)
  model.set_weights(trained.get_weights())
  return model


def calibration_set(config: config_lib.Config, count: int) -> np.ndarray:
  """`count` images of the run's train split (seeded, filtered as the run), decoded as in
  training: uint8 [count, size, size, 3]. All of them when the split is smaller."""
  builder = dataset_lib.builder(config.dataset, config.data_dir)
  filters = split_plan.filters_of(config)
  _, names = records_lib.labels_and_names(records_lib.records(builder, "train", filters))
  excluded = set(config.exclude)  # calibrated on what the run trained on
  names = [name for name in names if name not in excluded]
  chosen = np.random.default_rng(config.seed).permutation(len(names))[:count]
  keep = [names[index] for index in sorted(chosen)]
  decoded = input_pipeline.images(records_lib.records(builder, "train", filters, keep),
                                  config.image_size, config.resize)
  return np.stack([image.numpy() for image, _ in decoded])


def _test_batches(config: config_lib.Config, names, batch_size: int = 32):
  """(encoded, uint8 image, label) batches of the test images the run evaluated."""
  builder = dataset_lib.builder(config.dataset, config.data_dir)
  records = records_lib.records(builder, "test", records_lib.Filters(), names)
  return records.map(lambda record: (
      record["image"],
      input_pipeline.decode_and_resize(record["image"], config.image_size, config.resize),
      record["label"])).batch(batch_size)


def export(model_dir: str, export_format: str, out: str = None, *, quantize: str = "none",
           io: str = None, calibration_images: int = 200, max_accuracy_drop: float = None,
           tolerance: float = 1e-3, latency_runs: int = 50,
           calibration: np.ndarray = None) -> dict:
  """Writes the export and its report once it passes its checks; returns the report.

  Args:
    model_dir: a finished run folder.
    export_format: "saved_model" or "tflite".
    out: the export's path (default RUN/export/saved_model or RUN/export/model.tflite).
    quantize: TFLite only: one of `tflite_file.QUANTIZE`.
    io: TFLite only: "uint8" or "float32" input (default uint8 for int8).
    calibration_images: int8's representative images from the train split.
    max_accuracy_drop: largest allowed drop of test accuracy against the Keras
      model (default `tflite_file.MAX_ACCURACY_DROP[quantize]`).
    tolerance: largest allowed probability difference of an unquantized export.
    latency_runs: timed calls per latency figure (0: not timed).
    calibration: uint8 images to calibrate int8 with instead of the train split's.

  Returns:
    The report (see `_report`).

  Raises:
    ValueError: one line, for bad arguments, an --out that is not ours, a
      failed check (nothing is written) or a folder that cannot be written.
  """
  io, max_accuracy_drop = _checked_arguments(export_format, quantize, io, calibration,
                                             calibration_images, latency_runs,
                                             max_accuracy_drop)
  config = settings_lib.load_finished(model_dir)
  run = results.load(model_dir)
  out = out or run_paths.RunPaths(model_dir).export(export_format)
  export_report.check_out(out, export_format)
  try:
    # Written beside `out` in a scratch folder of ours and checked there: only an
    # export that passes the check takes `out`'s place.
    temporary = export_report.scratch_folder(out)
  except OSError as error:
    raise ValueError(f"--out={out} cannot be written ({error.strerror or error}): choose a "
                     "folder you can write to.") from None
  try:
    model = float32_model(config)
    if quantize == "int8" and calibration is None:
      calibration = calibration_set(config, calibration_images)
    written, exported = _written(model, config, export_format, quantize, io, calibration,
                                 temporary)
    figures = _measure(model, exported, config, run)
    drop = _check_guards(figures, export_format, quantize, max_accuracy_drop, tolerance)
    report = {"path": out, "format": export_format, "quantize": quantize,
              "io": io if export_format == "tflite" else None,
              "bytes": export_report.bytes_of(written),
              **figures, "accuracy_drop": drop, "max_accuracy_drop": max_accuracy_drop,
              "latency_ms": _latency(written, export_format, config, latency_runs),
              "calibration_images": int(len(calibration)) if quantize == "int8" else None,
              "model_dir": model_dir, "image_size": config.image_size, "resize": config.resize,
              "dataset": config.dataset, "class_names": list(source.LABELS),
              "content": export_report.content(written)}
    report = export_report.place(written, out, report, _put_in_place)
  except OSError as error:
    if run_folder.is_disk_full(error):
      raise run_folder.NoSpaceLeft(out) from None
    raise ValueError(f"--out={out} cannot be written ({error.strerror or error}): choose a "
                     "folder you can write to.") from None
  finally:
    shutil.rmtree(temporary, ignore_errors=True)
  print(export_report.summary(report))
  return report


def _checked_arguments(export_format: str, quantize: str, io: Optional[str], calibration,
                       calibration_images: int, latency_runs: int,
                       max_accuracy_drop: Optional[float]) -> tuple[str, float]:
  """(io, max_accuracy_drop) with their defaults; one line for a bad argument."""
  if export_format not in FORMATS:
    raise ValueError(f"--format={export_format} is not one of {', '.join(FORMATS)}.")
  io = io or tflite_file.default_io(quantize)
  if export_format == "saved_model" and (quantize != "none" or io != "float32"):
    raise ValueError("--quantize and --io are for --format=tflite; a SavedModel is float32.")
  tflite_file.check_arguments(quantize, io)
  if quantize == "int8" and calibration is None and calibration_images < 1:
    raise ValueError(f"--calibration_images must be at least 1, got {calibration_images}.")
  if latency_runs < 0:
    raise ValueError(f"--latency_runs must be 0 (not timed) or more, got {latency_runs}.")
  if max_accuracy_drop is None:
    max_accuracy_drop = tflite_file.MAX_ACCURACY_DROP[quantize]
  if not np.isfinite(max_accuracy_drop):
    raise ValueError(f"--max_accuracy_drop must be a finite number, got {max_accuracy_drop}: "
                     "an infinite or NaN guard would let any drop pass.")
  return io, max_accuracy_drop


def _written(model, config: config_lib.Config, export_format: str, quantize: str, io: str,
             calibration, folder: str):
  """(path, exported) of the export written in `folder`: `exported(encoded, images)`
  gives its probabilities, one array per signature."""
  if export_format == "saved_model":
    written = os.path.join(folder, "saved_model")
    return written, _saved_model(model, config, written)
  written = os.path.join(folder, "model.tflite")
  with open(written, "wb") as file:
    file.write(tflite_file.convert(model, quantize, io, calibration))
  runner = tflite_file.Runner(written)
  return written, lambda encoded, images: [runner.probabilities(images)]


def _check_guards(figures: dict, export_format: str, quantize: str, max_accuracy_drop: float,
                  tolerance: float) -> float:
  """The accuracy drop; one line, and nothing written, past a guard."""
  name = export_format if quantize == "none" else f"{quantize} {export_format}"
  drop = figures["keras_accuracy_test"] - figures["accuracy_test"]
  if drop > max_accuracy_drop + 1e-9:
    raise ValueError(
        f"the {name} export's test accuracy is {figures['accuracy_test']:.4f} against the "
        f"Keras model's {figures['keras_accuracy_test']:.4f} on {figures['test_images']} "
        f"test images (drop {drop:.4f} > --max_accuracy_drop={max_accuracy_drop:g}): not "
        "written; " + ("calibrate on more or more typical images (--calibration_images), "
                       "or use --quantize=float16 or dynamic." if quantize == "int8" else
                       "do not ship this model."))
  difference = figures["max_probability_difference"]
  if quantize == "none" and (not np.isfinite(difference) or difference > tolerance):
    raise ValueError(f"the {export_format} export differs from the Keras model by "
                     f"{difference:.2e} > --tolerance={tolerance:g}: not written; do not "
                     "ship this model.")
  return drop


def _latency(written: str, export_format: str, config: config_lib.Config,
             runs: int) -> Optional[dict]:
  """Median ms per image of the export and of the run's model.keras; None when not timed."""
  if not runs:
    return None
  return {"runs": runs, "all_threads": os.cpu_count(),
          "exported": (keras_latency.measure(written, config.image_size, runs)
                       if export_format == "saved_model" else tflite_file.latency_ms(
                           written, _latency_image(config.image_size), runs)),
          "keras": keras_latency.measure(run_paths.RunPaths(config.model_dir).model,
                                         config.image_size, runs)}


def _measure(model, exported, config: config_lib.Config, run: results.FinishedRun) -> dict:
  """The export against the Keras model on every test image the run evaluated.

  `exported(encoded, images)` gives a list of probability arrays (one per
  signature); the worst of them is reported.
  """
  names = [row["file_name"] for row in run.predictions]
  labels, keras_probabilities, exported_probabilities = [], [], []
  forward = tf.function(lambda images: model(tf.cast(images, tf.float32), training=False),
                        reduce_retracing=True)
  for encoded, images, label in _test_batches(config, names):
    labels.append(label.numpy())
    keras_probabilities.append(forward(images).numpy())
    exported_probabilities.append(exported(encoded, images.numpy()))
  if sum(map(len, labels)) != len(names):
    raise ValueError(f"the dataset at {config.data_dir} holds {sum(map(len, labels))} of the "
                     f"{len(names)} test images the run evaluated: it changed since; export "
                     "from the dataset the run was trained on.")
  labels = np.concatenate(labels)
  expected = np.concatenate(keras_probabilities)
  got = [np.concatenate(signature) for signature in zip(*exported_probabilities)]
  return {
      "test_images": len(labels),
      "accuracy_test": min(float(np.mean(p.argmax(1) == labels)) for p in got),
      "keras_accuracy_test": float(np.mean(expected.argmax(1) == labels)),
      # With --tta the run's own figure averages two views; the export sees one.
      "run_accuracy_test": run.metrics.get("plain", run.metrics)["accuracy_test"],
      "top1_agreement": min(float(np.mean(p.argmax(1) == expected.argmax(1))) for p in got),
      "max_probability_difference": max(float(np.abs(p - expected).max()) for p in got)}


def _latency_image(image_size: int) -> np.ndarray:
  return np.random.default_rng(0).integers(0, 256, (image_size, image_size, 3)).astype(np.uint8)


def _saved_model(model, config, written):
  """Writes the SavedModel; returns `exported(encoded, images)` of both its signatures."""
  image_size, resize = config.image_size, config.resize
  module = tf.Module()
  module.model = model

  @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.uint8)])
  def serve_images(images):
    return {"probabilities": module.model(tf.cast(images, tf.float32), training=False)}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
  def serve_encoded(image_bytes):
    decoded = tf.map_fn(
        lambda data: input_pipeline.decode_any_and_resize(data, image_size, resize),
        image_bytes, fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8))
    return serve_images(decoded)

  tf.saved_model.save(module, written, signatures={
      "serving_default": serve_encoded, "serve_images": serve_images})
  loaded = tf.saved_model.load(written)
  by_bytes, by_images = loaded.signatures["serving_default"], loaded.signatures["serve_images"]
  return lambda encoded, images: [
      by_bytes(image_bytes=encoded)["probabilities"].numpy(),
      by_images(images=tf.constant(images))["probabilities"].numpy()]


def _put_in_place(written: str, out: str):
  """Renames `written` to `out`, replacing a previous export of ours (file or folder).

  `check_out` has shown that whatever is at `out` is such an export.
  """
  if os.path.isdir(out) and not os.path.islink(out):
    previous = written + ".previous"
    os.replace(out, previous)  # same folder: a rename, never a half-deleted export
    os.replace(written, out)
    shutil.rmtree(previous)
  else:
    os.replace(written, out)
  if os.path.isdir(out):
    for folder, _, files in os.walk(out):
      os.chmod(folder, run_folder.directory_mode())
      for name in files:
        os.chmod(os.path.join(folder, name), run_folder.file_mode())
  else:
    os.chmod(out, run_folder.file_mode())
