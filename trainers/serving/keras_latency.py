"""Per-image latency of a Keras model or SavedModel on this CPU, 1 thread and all threads.

    python -m trainers.serving.keras_latency --model=RUN/model.keras|SAVED_MODEL \
        --image_size=160 --threads=1 --runs=50

TensorFlow fixes its thread pools when it starts, so each thread count is
measured in a process of its own (`measure` starts them); the process prints
the median milliseconds of a batch-1 call as JSON. TFLite files are timed in
process (`tflite_file.latency_ms`): their interpreter takes a thread count.
"""

import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from trainers import cli  # pylint: disable=g-import-not-at-top

_FLAGS = flags.FLAGS


def measure(path: str, image_size: int, runs: int) -> dict:
  """{"1_thread", "all_threads"}: median ms per image, each from a fresh process.

  Raises:
    ValueError: one line, when the measuring process fails.
  """
  timings = {}
  for name, threads in (("1_thread", 1), ("all_threads", os.cpu_count())):
    command = [sys.executable, "-m", "trainers.serving.keras_latency", f"--model={path}",
               f"--image_size={image_size}", f"--threads={threads}", f"--runs={runs}"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
      last = (result.stderr.strip().splitlines() or ["no output"])[-1]
      raise ValueError(f"timing {path} with {threads} thread(s) failed ({last}); rerun with "
                       "--latency_runs=0 to export without timings.")
    timings[name] = json.loads(lines[-1])["median_ms"]
  return timings


def _call(path: str):
  """A batch-1 function of float32 images for a SavedModel folder or a .keras file."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if os.path.isdir(path):
    signature = tf.saved_model.load(path).signatures["serve_images"]
    return lambda images: signature(images=tf.cast(images, tf.uint8))
  import keras  # pylint: disable=g-import-not-at-top
  model = keras.saving.load_model(path, safe_mode=True)
  return tf.function(lambda images: model(images, training=False))


def main(argv):
  cli.no_arguments(argv)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.threading.set_intra_op_parallelism_threads(_FLAGS.threads)
  tf.config.threading.set_inter_op_parallelism_threads(_FLAGS.threads)
  from trainers.serving import tflite_file  # pylint: disable=g-import-not-at-top
  call = _call(_FLAGS.model)
  image = tf.constant(np.random.default_rng(0).integers(
      0, 256, (1, _FLAGS.image_size, _FLAGS.image_size, 3)).astype(np.float32))
  print(json.dumps({"median_ms": tflite_file.median_ms(lambda: call(image), _FLAGS.runs),
                    "threads": _FLAGS.threads}))


def _define_flags():
  flags.DEFINE_string("model", None, "A .keras file or a SavedModel folder.", required=True)
  flags.DEFINE_integer("image_size", None, "The model's input side.", required=True)
  flags.DEFINE_integer("threads", 1, "TensorFlow's intra- and inter-op threads.")
  flags.DEFINE_integer("runs", 50, "Timed calls (the median is printed).")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
