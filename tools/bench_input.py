r"""Input throughput, side by side on the same images: ours against what users pick.

    python -m tools.bench_input --manual_dir=work/manual --data_dir=work/tensorflow_datasets

Images/second at the same output size, after a warm-up, median of `--passes`:
  seed_loader       keras.utils.load_img(target_size) + img_to_array in a loop (the study)
  directory_loader  keras.utils.image_dataset_from_directory on the raw folders
  decode_ceiling    decode + resize of record bytes already in memory (per config)
  pipeline          trainers.input_pipeline, a whole first (uncached) epoch of the
                    train split, shuffle-buffer fill included (per config)
  pipeline_cached   the same, an epoch after its cache was filled (per config)
The loaders and the ceiling read --limit images; the pipeline a whole epoch.
"""

import json
import os
import statistics
import time

from absl import app
from absl import flags
import numpy as np

_FLAGS = flags.FLAGS


def _rate(run, count, passes):
  """Median images/second of `passes` timed runs of `run` after one warm-up."""
  run()
  rates = []
  for _ in range(passes):
    start = time.perf_counter()
    run()
    rates.append(count / (time.perf_counter() - start))
  return statistics.median(rates)


def _raw_files(manual_dir, limit):
  from animals10_tfds import scan  # pylint: disable=g-import-not-at-top
  source = scan.Source.find(manual_dir)
  entries, _ = source.list()
  step = max(1, len(entries) // limit)
  return [os.path.join(source.root, entry.path) for entry in entries[::step][:limit]]


def seed_loader(files, image_size):
  import keras  # pylint: disable=g-import-not-at-top

  def run():
    arrays = [keras.utils.img_to_array(keras.utils.load_img(path, target_size=(
        image_size, image_size))) for path in files]
    return np.stack(arrays)
  return run


def directory_loader(manual_dir, image_size, batch_size, limit):
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from animals10_tfds import scan  # pylint: disable=g-import-not-at-top
  raw = scan.Source.find(manual_dir).root
  dataset = keras.utils.image_dataset_from_directory(
      raw, image_size=(image_size, image_size), batch_size=batch_size, shuffle=False,
      verbose=False).ignore_errors().prefetch(tf.data.AUTOTUNE)
  dataset = dataset.take(limit // batch_size)

  def run():
    for _ in dataset:
      pass
  return run, (limit // batch_size) * batch_size


def _split(config, data_dir):
  from trainers import input_pipeline  # pylint: disable=g-import-not-at-top
  builder = input_pipeline.builder(f"animals10_tfds/{config}", data_dir)
  return input_pipeline, builder, input_pipeline.records(builder, "train")


def decode_ceiling(config, data_dir, image_size, batch_size, limit):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  input_pipeline, builder, records = _split(config, data_dir)
  every = max(1, builder.info.splits["train"].num_examples // limit)  # spread over the split
  encoded = [record["image"] for record in records.shard(every, 0).take(limit)]
  in_memory = tf.data.Dataset.from_tensor_slices(tf.stack(encoded))
  dataset = in_memory.map(
      lambda data: input_pipeline.decode_and_resize(data, image_size, "crop"),
      num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)

  def run():
    for _ in dataset:
      pass
  return run, len(encoded)


def pipeline(config, data_dir, image_size, batch_size, cached):
  """The trainer's pipeline over one whole epoch of the train split."""
  input_pipeline, builder, records = _split(config, data_dir)
  count = (builder.info.splits["train"].num_examples // batch_size) * batch_size
  dataset = input_pipeline.training_batches(records, input_pipeline.TrainingStream(
      batch_size=batch_size, steps_per_epoch=count // batch_size, epochs=1,
      image_size=image_size, cache_decoded=cached,
      record_bytes=input_pipeline.mean_record_bytes(builder)))

  def run():
    for _ in dataset:
      pass
  if cached:
    run()  # fill the cache; _rate then warms up once more and times cached epochs
  return run, count


def measure(manual_dir, data_dir, image_size=100, batch_size=64, limit=2048, passes=3,
            configs=("160px", "full")) -> dict:
  """All figures of the benchmark, images/second, plus the target ratios."""
  files = _raw_files(manual_dir, min(limit, 512))  # the slow loop gets fewer files
  results = {"seed_loader": _rate(seed_loader(files, image_size), len(files), passes)}
  run, count = directory_loader(manual_dir, image_size, batch_size, limit)
  results["directory_loader"] = _rate(run, count, passes)
  for config in configs:
    run, count = decode_ceiling(config, data_dir, image_size, batch_size, limit)
    results[f"decode_ceiling/{config}"] = _rate(run, count, passes)
    for cached in (False, True):
      run, count = pipeline(config, data_dir, image_size, batch_size, cached)
      key = "pipeline_cached" if cached else "pipeline"
      results[f"{key}/{config}"] = _rate(run, count, passes)
  main_config = configs[0]
  results["ratios"] = {
      "pipeline/directory_loader": results[f"pipeline/{main_config}"] / results["directory_loader"],
      "pipeline/seed_loader": results[f"pipeline/{main_config}"] / results["seed_loader"],
      "pipeline/decode_ceiling": (results[f"pipeline/{main_config}"]
                                  / results[f"decode_ceiling/{main_config}"]),
      "pipeline_cached/directory_loader": (results[f"pipeline_cached/{main_config}"]
                                           / results["directory_loader"]),
  }
  return results


def _define_flags():
  flags.DEFINE_string("manual_dir", None, "A raw-img tree (tools.make_sample).", required=True)
  flags.DEFINE_string("data_dir", None, "Its built TFDS data_dir.", required=True)
  flags.DEFINE_integer("image_size", 100, "Output side.")
  flags.DEFINE_integer("batch_size", 64, "Batch size.")
  flags.DEFINE_integer("limit", 2048, "Images per pass.")
  flags.DEFINE_integer("passes", 3, "Timed passes (median).")
  flags.DEFINE_list("configs", ["160px", "full"], "Dataset configs to measure.")
  flags.DEFINE_string("json", None, "Write the figures here.")


def main(argv):
  del argv
  results = measure(_FLAGS.manual_dir, _FLAGS.data_dir, _FLAGS.image_size,
                    _FLAGS.batch_size, _FLAGS.limit, _FLAGS.passes, tuple(_FLAGS.configs))
  print(f"{'loader':32s} {'images/s':>10s}")
  for key, value in results.items():
    if key != "ratios":
      print(f"{key:32s} {value:10.0f}")
  for key, value in results["ratios"].items():
    print(f"{key:32s} {value:10.2f}x")
  if _FLAGS.json:
    with open(_FLAGS.json, "w") as file:
      json.dump(results, file, indent=2)


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  _define_flags()
  app.run(main)
