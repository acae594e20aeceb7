r"""Exports a trained run as a SavedModel or a TFLite file, and checks it.

    python -m trainers.export --model_dir=work/runs/cnn2 --format=saved_model|tflite

The export is a float32 copy of the run's model (mixed-precision layers do not
convert to TFLite). The SavedModel has two signatures: `serving_default` takes
encoded JPEG bytes (decoded exactly as in training), `serve_images` takes uint8
images at the run's size. The TFLite model takes float32 RGB in [0, 255] at the
run's size. Both formats are checked against the Keras model on a
batch of test images; the maximum absolute difference of probabilities is
printed, and a difference past --tolerance fails the export: it is written
under a temporary name and only takes --out's place once it passes.
"""

import os
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
from absl import logging  # pylint: disable=g-import-not-at-top

from trainers import run_folder  # pylint: disable=g-import-not-at-top

_FLAGS = flags.FLAGS


def float32_model(config):
  """The run's model rebuilt under the float32 policy, with its trained weights."""
  import keras  # pylint: disable=g-import-not-at-top
  from trainers import models  # pylint: disable=g-import-not-at-top
  trained = keras.saving.load_model(os.path.join(config.model_dir, "model.keras"),
                                    safe_mode=True)
  keras.mixed_precision.set_global_policy("float32")
  model = models.build_model(config.model, config.image_size, head_units=config.head_units,
                             augment=config.augment, weights=None)
  model.set_weights(trained.get_weights())
  return model


def check_batch(config, count: int):
  """Encoded JPEG bytes of `count` test images of the run's dataset."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from trainers import input_pipeline  # pylint: disable=g-import-not-at-top
  builder = input_pipeline.builder(config.dataset, config.data_dir)
  records = input_pipeline.records(builder, "test").take(count)
  return tf.stack([record["image"] for record in records])


def export(model_dir: str, export_format: str, out: str = None, tolerance: float = 1e-3,
           check_images: int = 32) -> dict:
  """Writes the export and returns {path, max_abs_diff}; raises past `tolerance`."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from trainers import input_pipeline  # pylint: disable=g-import-not-at-top
  from trainers import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_finished(model_dir)
  image_size, resize = config.image_size, config.resize
  model = float32_model(config)
  encoded = check_batch(config, check_images)
  images = tf.map_fn(lambda data: input_pipeline.decode_and_resize(data, image_size, resize),
                     encoded, fn_output_signature=tf.uint8)
  expected = model.predict(tf.cast(images, tf.float32), verbose=0)
  out = out or os.path.join(model_dir, "export",
                            "saved_model" if export_format == "saved_model" else "model.tflite")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)

  module = tf.Module()
  module.model = model

  @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.uint8)])
  def serve_images(images):
    return {"probabilities": module.model(tf.cast(images, tf.float32), training=False)}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
  def serve_jpeg(jpeg_bytes):
    decoded = tf.map_fn(lambda data: input_pipeline.decode_and_resize(data, image_size, resize),
                        jpeg_bytes, fn_output_signature=tf.uint8)
    return serve_images(decoded)

  # Written beside `out` under a temporary name and checked there: only an
  # export that passes the parity check takes `out`'s place.
  temporary = tempfile.mkdtemp(prefix=".tmp-export-", dir=os.path.dirname(os.path.abspath(out)))
  try:
    if export_format == "saved_model":
      written = os.path.join(temporary, "saved_model")
      tf.saved_model.save(module, written, signatures={
          "serving_default": serve_jpeg, "serve_images": serve_images})
      loaded = tf.saved_model.load(written)
      from_jpeg = loaded.signatures["serving_default"](jpeg_bytes=encoded)["probabilities"]
      from_images = loaded.signatures["serve_images"](images=images)["probabilities"]
      difference = max(np.abs(from_jpeg.numpy() - expected).max(),
                       np.abs(from_images.numpy() - expected).max())
    else:
      # Converting the Keras model directly: going through the SavedModel above
      # produced NaNs in TF 2.21's converter.
      written = os.path.join(temporary, "model.tflite")
      with open(written, "wb") as file:
        file.write(tf.lite.TFLiteConverter.from_keras_model(model).convert())
      interpreter = tf.lite.Interpreter(model_path=written)
      runner = interpreter.get_signature_runner()
      input_name = interpreter.get_signature_list()["serving_default"]["inputs"][0]
      outputs = runner(**{input_name: tf.cast(images, tf.float32).numpy()})
      difference = np.abs(next(iter(outputs.values())) - expected).max()
    difference = float(difference)
    if not np.isfinite(difference) or difference > tolerance:
      raise ValueError(f"the {export_format} export differs from the Keras model by "
                       f"{difference:.2e} > --tolerance={tolerance:g}: not written; do not "
                       "ship this model.")
    _put_in_place(written, out)
  except OSError as error:
    if run_folder.is_disk_full(error):
      raise run_folder.NoSpaceLeft(out) from None
    raise
  finally:
    shutil.rmtree(temporary, ignore_errors=True)
  print(f"{export_format} written to {out}; max |probability difference| vs Keras on "
        f"{len(expected)} test images: {difference:.2e} (tolerance {tolerance:g})")
  return {"path": out, "max_abs_diff": difference}


def _put_in_place(written: str, out: str):
  """Renames `written` to `out`, replacing a previous export (file or folder)."""
  if os.path.isdir(out) and not os.path.islink(out):
    previous = written + ".previous"
    os.replace(out, previous)  # same folder: a rename, never a half-deleted export
    os.replace(written, out)
    shutil.rmtree(previous)
  else:
    os.replace(written, out)
  if os.path.isdir(out):
    for folder, _, files in os.walk(out):
      os.chmod(folder, run_folder.DIRECTORY_MODE)
      for name in files:
        os.chmod(os.path.join(folder, name), run_folder.FILE_MODE)
  else:
    os.chmod(out, run_folder.FILE_MODE)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if not flags.FLAGS["verbosity"].present:
    # TensorFlow's and TFDS's INFO lines ("Load dataset info from ...", "Reduce to
    # /job:localhost ...") are for their developers; --verbosity=0 shows them.
    logging.set_verbosity(logging.WARNING)
  try:
    export(_FLAGS.model_dir, _FLAGS.format, _FLAGS.out, _FLAGS.tolerance, _FLAGS.check_images)
  except ValueError as error:
    sys.exit(f"error: {error}")


def _define_flags():
  flags.DEFINE_string("model_dir", None, "A finished run folder.", required=True)
  flags.DEFINE_enum("format", "saved_model", ["saved_model", "tflite"], "Export format.")
  flags.DEFINE_string("out", None, "Output path (default RUN/export/saved_model or "
                      "RUN/export/model.tflite).")
  flags.DEFINE_float("tolerance", 1e-3, "Largest allowed probability difference.")
  flags.DEFINE_integer("check_images", 32, "Test images to check with.")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
