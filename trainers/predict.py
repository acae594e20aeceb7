r"""Classifies image files and folders with a trained run, or with its TFLite export.

    python -m trainers.predict --model_dir=work/runs/cnn2 photo.jpg folder/ [--json]
    python -m trainers.predict --model=model.tflite photo.jpg folder/

The flags, then one call: `trainers.predict_lib.predict`. A file that cannot
be read gets one line and the rest go on; the exit status is non-zero if any
failed.
"""

import json
import os
import sys

# TensorFlow's C++ start-up chatter would bury the table.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top

from trainers import cli  # pylint: disable=g-import-not-at-top
from trainers.serving import predict as predict_lib  # pylint: disable=g-import-not-at-top

_FLAGS = flags.FLAGS


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("Give one or more image files or folders.")
  cli.quiet_logs()
  try:
    results, errors = predict_lib.predict(_FLAGS.model_dir, argv[1:], _FLAGS.top_k,
                                          _FLAGS.batch_size, _FLAGS.explain, _FLAGS.model)
  except ValueError as error:
    sys.exit(f"error: {error}")
  for item in errors:
    print(f"error: {predict_lib.escaped(item['path'])}: {item['error']}", file=sys.stderr)
  if _FLAGS.json:
    print(json.dumps({"predictions": results, "errors": errors}, indent=2))
  else:
    for item in results:
      print(predict_lib.table_row(item["path"], item["predictions"]))
  if errors:
    sys.exit(1)


def _define_flags():
  flags.DEFINE_string("model_dir", None, "A finished run folder.")
  flags.DEFINE_string(
      "model", None, "Instead of --model_dir: a .tflite file written by "
      "trainers.export, with its report beside it.")
  flags.DEFINE_integer("top_k", 3, "Labels to show per image.")
  flags.DEFINE_bool("json", False, "Print JSON instead of a table.")
  flags.DEFINE_integer("batch_size", 32, "Images per batch.")
  flags.DEFINE_string(
      "explain", None, "Also write DIR/<name>.png per image: the image and "
      "its Grad-CAM heat map for the top-1 class.")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
