r"""Input throughput, side by side on the same images: ours against what users pick.

    python -m tools.bench_input --manual_dir=work/manual --data_dir=work/tensorflow_datasets

Images/second at the same output size, after a warm-up, median of `--passes`:
  seed_loader       keras.utils.load_img(target_size) + img_to_array in a loop (the study)
  directory_loader  keras.utils.image_dataset_from_directory on the raw folders
  decode_ceiling    decode + resize of record bytes already in memory (per config)
  pipeline          trainers.data.input_pipeline, a whole first (uncached) epoch of the
                    train split, shuffle-buffer fill included (per config)
  pipeline_cached   the same, an epoch after its cache was filled (per config)
The loaders and the ceiling read --limit images; the pipeline a whole epoch.
"""

import os
import statistics
import time

from absl import app
from absl import flags

from trainers.runs import run_folder  # pylint: disable=g-import-not-at-top
# TensorFlow, Keras and the trainer are imported inside the functions that time
# them: each loader is measured from a cold start of what it uses, and a flag
# error answers before TensorFlow's seconds of start-up.
import numpy as np

_FLAGS = flags.FLAGS


def _rate(run, passes):
  """Median images/second of `passes` timed runs of `run` after one warm-up.

  `run` returns how many images it really produced: a loader that drops
  unreadable files (or whole batches) is not credited with them.
  """
  run()
  rates = []
  for _ in range(passes):
    start = time.perf_counter()
    count = run()
    rates.append(count / (time.perf_counter() - start))
  return statistics.median(rates)


def _count(dataset) -> int:
  return sum(int(batch[0].shape[0]) if isinstance(batch, tuple) else int(batch.shape[0])
             for batch in dataset)


def _raw_root(manual_dir) -> str:
  """The raw-img folder of `manual_dir` (the loaders read files, not Kaggle's zip)."""
  from animals10_tfds import source  # pylint: disable=g-import-not-at-top
  source = source.Source.find(manual_dir)
  if source.archive:
    raise ValueError(f"{manual_dir} holds {source.archive}: the baseline loaders read files; "
                     "unzip it and pass the folder that holds raw-img/.")
  return source.root


def _raw_files(manual_dir, limit):
  from animals10_tfds import source  # pylint: disable=g-import-not-at-top
  entries, _ = source.Source(_raw_root(manual_dir)).list()
  step = max(1, len(entries) // limit)
  return [os.path.join(_raw_root(manual_dir), entry.path)
          for entry in entries[::step][:limit]]


def seed_loader(files, image_size):
  import keras  # pylint: disable=g-import-not-at-top

  def run():  # centre crop, as our pipeline (--resize=crop) and the study
    arrays = [keras.utils.img_to_array(keras.utils.load_img(
        path, target_size=(image_size, image_size), keep_aspect_ratio=True)) for path in files]
    return len(np.stack(arrays))
  return run


def directory_loader(manual_dir, image_size, batch_size, limit):
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  dataset = keras.utils.image_dataset_from_directory(
      _raw_root(manual_dir), image_size=(image_size, image_size), batch_size=batch_size,
      shuffle=False, crop_to_aspect_ratio=True, verbose=False)
  # A file TF cannot decode fails its whole batch: dropped here, and not counted.
  dataset = dataset.ignore_errors().take(max(1, limit // batch_size)).prefetch(
      tf.data.AUTOTUNE)
  return lambda: _count(dataset)


def _split(config, data_dir):
  from trainers.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from trainers.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  from trainers.data import records as records_lib  # pylint: disable=g-import-not-at-top
  builder = dataset_lib.builder(f"animals10_tfds/{config}", data_dir)
  return input_pipeline, builder, records_lib.records(builder, "train")


def decode_ceiling(config, data_dir, image_size, batch_size, limit):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  input_pipeline, builder, records = _split(config, data_dir)
  every = max(1, builder.info.splits["train"].num_examples // limit)  # spread over the split
  encoded = [record["image"] for record in records.shard(every, 0).take(limit)]
  in_memory = tf.data.Dataset.from_tensor_slices(tf.stack(encoded))
  dataset = in_memory.map(
      lambda data: input_pipeline.decode_and_resize(data, image_size, "crop"),
      num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)

  return lambda: _count(dataset)


def pipeline(config, data_dir, image_size, batch_size, cached):
  """The trainer's pipeline over one whole epoch of the train split."""
  from trainers.data import records as records_lib  # pylint: disable=g-import-not-at-top
  input_pipeline, builder, records = _split(config, data_dir)
  steps = max(1, builder.info.splits["train"].num_examples // batch_size)
  dataset = input_pipeline.training_batches(records, input_pipeline.TrainingStream(
      batch_size=batch_size, steps_per_epoch=steps, epochs=1,
      image_size=image_size, cache_decoded=cached,
      record_bytes=records_lib.mean_record_bytes(builder)))

  def run():
    return _count(dataset)
  if cached:
    run()  # fill the cache; _rate then warms up once more and times cached epochs
  return run


def measure(manual_dir, data_dir, image_size=100, batch_size=64, limit=2048, passes=3,
            configs=("160px", "full")) -> dict:
  """All figures of the benchmark, images/second, plus the target ratios."""
  files = _raw_files(manual_dir, min(limit, 512))  # the slow loop gets fewer files
  results = {"seed_loader": _rate(seed_loader(files, image_size), passes)}
  results["directory_loader"] = _rate(
      directory_loader(manual_dir, image_size, batch_size, limit), passes)
  for config in configs:
    results[f"decode_ceiling/{config}"] = _rate(
        decode_ceiling(config, data_dir, image_size, batch_size, limit), passes)
    for cached in (False, True):
      key = "pipeline_cached" if cached else "pipeline"
      results[f"{key}/{config}"] = _rate(
          pipeline(config, data_dir, image_size, batch_size, cached), passes)
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
    run_folder.write_json(_FLAGS.json, results)


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  _define_flags()
  app.run(main)
