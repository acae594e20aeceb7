r"""Exports a trained run as a SavedModel or a TFLite file, and measures what it lost.

    python -m trainers.export --model_dir=work/runs/cnn2 --format=saved_model|tflite \
        [--quantize=none|dynamic|float16|int8] [--io=uint8|float32] \
        [--calibration_images=200] [--max_accuracy_drop=X] [--out=PATH]

The flags, then one call: `trainers.export_lib.export` (what is measured,
what is refused, and the report beside the export are described there).
"""

import os
import sys

# TensorFlow's C++ start-up chatter would bury a one-line error.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top

from trainers import cli  # pylint: disable=g-import-not-at-top
from trainers.serving import export as export_lib  # pylint: disable=g-import-not-at-top
from trainers.serving import tflite_file  # pylint: disable=g-import-not-at-top

_FLAGS = flags.FLAGS


def main(argv):
  cli.no_arguments(argv)
  cli.quiet_logs()
  try:
    export_lib.export(_FLAGS.model_dir,
                      _FLAGS.format,
                      _FLAGS.out,
                      quantize=_FLAGS.quantize,
                      io=_FLAGS.io,
                      calibration_images=_FLAGS.calibration_images,
                      max_accuracy_drop=_FLAGS.max_accuracy_drop,
                      tolerance=_FLAGS.tolerance,
                      latency_runs=_FLAGS.latency_runs)
  except ValueError as error:
    sys.exit(f"error: {error}")


def _define_flags():
  flags.DEFINE_string("model_dir", None, "A finished run folder.", required=True)
  flags.DEFINE_enum("format", "saved_model", list(export_lib.FORMATS), "Export format.")
  flags.DEFINE_string(
      "out", None, "Output path (default RUN/export/saved_model or "
      "RUN/export/model.tflite); an existing path is replaced only if it is "
      "an unchanged export of ours.")
  flags.DEFINE_enum("quantize", "none", list(tflite_file.QUANTIZE),
                    "TFLite post-training quantization.")
  flags.DEFINE_enum(
      "io", None, list(tflite_file.IO), "TFLite input type (default uint8 for "
      "int8, else float32); the output is float32 probabilities.")
  flags.DEFINE_integer("calibration_images", 200, "int8: representative images from the "
                       "train split (seeded).")
  flags.DEFINE_float(
      "max_accuracy_drop", None, "Largest allowed test-accuracy drop against "
      "the Keras model (default 0.01 for none and float16, 0.02 for dynamic "
      "and int8).")
  flags.DEFINE_float("tolerance", 1e-3, "Unquantized exports: largest allowed probability "
                     "difference.")
  flags.DEFINE_integer("latency_runs", 50, "Timed calls per latency figure (0: not timed).")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
