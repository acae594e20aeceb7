r"""Exports a trained run as a SavedModel or a TFLite file, and checks it.

    python -m trainers.export --model_dir=work/runs/cnn2 --format=saved_model|tflite \
        [--out=PATH]

The export is a float32 copy of the run's model (mixed-precision layers do not
convert to TFLite). The SavedModel has two signatures: `serving_default` takes
encoded JPEG bytes (decoded exactly as in training), `serve_images` takes uint8
images at the run's size. The TFLite model takes float32 RGB in [0, 255] at the
run's size. Both formats are checked against the Keras model on test images;
the largest difference of probabilities and the top-1 agreement are printed,
and a difference past --tolerance fails the export: it is written under a
temporary name and only takes --out's place once it passes.

Every export gets a report beside it, `<out>.json` (format, bytes, SHA-256 or
file list, the check's figures). It is also the export's marker: an existing
--out is replaced only when its report shows it is an unchanged export of ours;
anything else at --out (a run folder, a user's files) is refused and left
untouched.

EXIF orientation: `serving_default` decodes the bytes it is given as stored.
TensorFlow's decoders ignore the EXIF orientation tag and have no op that reads
it, so a client sends upright pixels, as the dataset builder and
`trainers.predict` make them (both rotate by EXIF with Pillow).
"""

import json
import os
import shutil
import sys
import tempfile

# TensorFlow's C++ start-up chatter would bury a one-line error.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
import keras  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from trainers import config as config_lib  # pylint: disable=g-import-not-at-top
from trainers import entry_point  # pylint: disable=g-import-not-at-top
from trainers import input_pipeline  # pylint: disable=g-import-not-at-top
from trainers import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
from trainers import records as records_lib  # pylint: disable=g-import-not-at-top
from trainers import models  # pylint: disable=g-import-not-at-top
from trainers import run_folder  # pylint: disable=g-import-not-at-top
from trainers import run_paths  # pylint: disable=g-import-not-at-top

FORMATS = ("saved_model", "tflite")
_FLAGS = flags.FLAGS


def float32_model(config: config_lib.Config) -> keras.Model:
  """The run's model rebuilt under the float32 policy, with its trained weights."""
  trained = keras.saving.load_model(run_paths.RunPaths(config.model_dir).model, safe_mode=True)
  keras.mixed_precision.set_global_policy("float32")
  model = models.build_model(config.model, config.image_size, head_units=config.head_units,
                             augment=config.augment, weights=None)
  model.set_weights(trained.get_weights())
  return model


def check_batch(config: config_lib.Config, count: int) -> tf.Tensor:
  """Encoded JPEG bytes of up to `count` test images of the run's dataset."""
  builder = dataset_lib.builder(config.dataset, config.data_dir)
  records = records_lib.records(builder, "test").take(count)
  return tf.stack([record["image"] for record in records])


def report_path(out: str) -> str:
  """The report (and marker) of an export: `<out>.json` beside it."""
  return os.path.normpath(out) + ".json"


def check_out(out: str, export_format: str):
  """Raises ValueError unless `out` is free or holds an unchanged export of ours.

  Checked before any work: nothing at `out` is touched when it is refused.
  """
  if not os.path.lexists(out):
    return
  kind = "folder" if os.path.isdir(out) else "file"
  previous = _read_report(out)
  if previous is None:
    raise ValueError(f"--out={out} is an existing {kind} that is not an export of ours (no "
                     f"report {report_path(out)} describes it): nothing was touched; choose "
                     "a new path, or move it away yourself.")
  if previous.get("format") != export_format:
    raise ValueError(f"--out={out} holds a {previous.get('format')} export, not "
                     f"{export_format}: nothing was touched; choose another --out.")
  if previous.get("content") != _content(out):
    raise ValueError(f"--out={out} was changed since it was exported (its files differ from "
                     f"{report_path(out)}): nothing was touched; choose a new path, or move "
                     "it away yourself.")


def export(model_dir: str, export_format: str, out: str = None, tolerance: float = 1e-3,
           check_images: int = 32) -> dict:
  """Writes the export and its report; returns the report.

  Args:
    model_dir: a finished run folder.
    export_format: "saved_model" or "tflite".
    out: the export's path (default RUN/export/saved_model or RUN/export/model.tflite).
    tolerance: largest allowed absolute difference of probabilities.
    check_images: test images to check the export with (at least 1).

  Returns:
    The report: {path, format, bytes, content, max_abs_diff, top1_agreement,
    check_images}.

  Raises:
    ValueError: one line, for bad arguments, an --out that is not ours, a
      failed check (nothing is written) or a folder that cannot be written.
  """
  if export_format not in FORMATS:
    raise ValueError(f"--format={export_format} is not one of {', '.join(FORMATS)}.")
  if check_images < 1:
    raise ValueError(f"--check_images must be at least 1, got {check_images}.")
  config = config_lib.load_finished(model_dir)
  out = out or run_paths.RunPaths(model_dir).export(export_format)
  check_out(out, export_format)
  parent = os.path.dirname(os.path.abspath(out))
  try:
    os.makedirs(parent, exist_ok=True)
    # Written beside `out` under a temporary name and checked there: only an
    # export that passes the check takes `out`'s place.
    temporary = tempfile.mkdtemp(prefix=".tmp-export-", dir=parent)
  except OSError as error:
    raise ValueError(f"--out={out} cannot be written ({error.strerror or error}): choose a "
                     "folder you can write to.") from None
  try:
    model = float32_model(config)
    encoded = check_batch(config, check_images)
    images = tf.map_fn(
        lambda data: input_pipeline.decode_and_resize(data, config.image_size, config.resize),
        encoded, fn_output_signature=tf.uint8)
    expected = model.predict(tf.cast(images, tf.float32), verbose=0)
    if export_format == "saved_model":
      written = os.path.join(temporary, "saved_model")
      got = _saved_model(model, config, written, encoded, images)
    else:
      written = os.path.join(temporary, "model.tflite")
      got = _tflite(model, written, images)
    difference = max(float(np.abs(probabilities - expected).max()) for probabilities in got)
    agreement = min(float(np.mean(probabilities.argmax(1) == expected.argmax(1)))
                    for probabilities in got)
    if not np.isfinite(difference) or difference > tolerance:
      raise ValueError(f"the {export_format} export differs from the Keras model by "
                       f"{difference:.2e} > --tolerance={tolerance:g}: not written; do not "
                       "ship this model.")
    _put_in_place(written, out)
    report = {"path": out, "format": export_format, "model_dir": model_dir,
              "bytes": _bytes(out), "content": _content(out), "max_abs_diff": difference,
              "top1_agreement": agreement, "check_images": int(len(expected))}
    run_folder.write_json(report_path(out), report)
  except OSError as error:
    if run_folder.is_disk_full(error):
      raise run_folder.NoSpaceLeft(out) from None
    raise ValueError(f"--out={out} cannot be written ({error.strerror or error}): choose a "
                     "folder you can write to.") from None
  finally:
    shutil.rmtree(temporary, ignore_errors=True)
  print(f"{export_format} written to {out} ({report['bytes']:,} bytes, report "
        f"{report_path(out)}); on {len(expected)} test images: max |probability difference| "
        f"vs Keras {difference:.2e} (tolerance {tolerance:g}), top-1 agreement "
        f"{agreement:.4f}")
  return report


def _saved_model(model, config, written, encoded, images) -> list[np.ndarray]:
  """Writes the SavedModel; returns both signatures' probabilities on the check batch."""
  image_size, resize = config.image_size, config.resize
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

  tf.saved_model.save(module, written, signatures={
      "serving_default": serve_jpeg, "serve_images": serve_images})
  loaded = tf.saved_model.load(written)
  return [loaded.signatures["serving_default"](jpeg_bytes=encoded)["probabilities"].numpy(),
          loaded.signatures["serve_images"](images=images)["probabilities"].numpy()]


def _tflite(model, written, images) -> list[np.ndarray]:
  """Writes the TFLite file; returns its probabilities on the check batch."""
  # Converting the Keras model directly: going through the SavedModel above
  # produced NaNs in TF 2.21's converter.
  with open(written, "wb") as file:
    file.write(tf.lite.TFLiteConverter.from_keras_model(model).convert())
  interpreter = tf.lite.Interpreter(model_path=written)
  runner = interpreter.get_signature_runner()
  input_name = interpreter.get_signature_list()["serving_default"]["inputs"][0]
  outputs = runner(**{input_name: tf.cast(images, tf.float32).numpy()})
  return [next(iter(outputs.values()))]


def _content(path: str):
  """What an export holds: a file's SHA-256, or a folder's {relative path: SHA-256}."""
  if not os.path.isdir(path):
    return run_folder.sha256_of(path) if os.path.isfile(path) else None
  files = {}
  for folder, _, names in os.walk(path):
    for name in names:
      full = os.path.join(folder, name)
      files[os.path.relpath(full, path)] = run_folder.sha256_of(full)
  return dict(sorted(files.items()))


def _bytes(path: str) -> int:
  if not os.path.isdir(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(folder, name))
             for folder, _, names in os.walk(path) for name in names)


def _read_report(out: str):
  try:
    with open(report_path(out)) as file:
      report = json.load(file)
  except (OSError, ValueError):
    return None
  return report if isinstance(report, dict) else None


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


def main(argv):
  entry_point.no_arguments(argv)
  entry_point.quiet_logs()
  try:
    export(_FLAGS.model_dir, _FLAGS.format, _FLAGS.out, _FLAGS.tolerance, _FLAGS.check_images)
  except ValueError as error:
    sys.exit(f"error: {error}")


def _define_flags():
  flags.DEFINE_string("model_dir", None, "A finished run folder.", required=True)
  flags.DEFINE_enum("format", "saved_model", list(FORMATS), "Export format.")
  flags.DEFINE_string("out", None, "Output path (default RUN/export/saved_model or "
                      "RUN/export/model.tflite); an existing path is replaced only if it is "
                      "an unchanged export of ours.")
  flags.DEFINE_float("tolerance", 1e-3, "Largest allowed probability difference.")
  flags.DEFINE_integer("check_images", 32, "Test images to check with (at least 1).")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
