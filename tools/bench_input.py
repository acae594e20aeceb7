r"""Input throughput, side by side on the same images: ours against what users pick.

    python -m tools.bench_input --manual_dir=work/manual --data_dir=work/tensorflow_datasets

Images/second at the same output size. Every contender is warmed up once, then
timed pass by pass in turn (A B C A B C ...), so a change of load on a shared
machine falls on all of them alike; each figure is the median of `--passes`,
with its spread (min, max) beside it:
  seed_loader       keras.utils.load_img(target_size) + img_to_array in a loop (the study)
  directory_loader  keras.utils.image_dataset_from_directory on the raw folders
  decode_ceiling    decode + resize of record bytes already in memory, image by image
                    (per config)
  pipeline          trainers.data.input_pipeline, a whole first (uncached) epoch of the
                    train split, shuffle-buffer fill included (per config)
  pipeline_cached   the same, an epoch after its cache was filled (per config)
  pipeline_later    the same uncached, its second epoch timed alone: no shuffle-buffer
                    fill, what each later epoch costs without --cache (per config)
The loaders and the ceiling read --limit images; the pipeline a whole epoch.

`--threads=1,2` also times the ceiling and the pipeline of every config with
tf.data's private thread pool of that size (and one thread inside each op), and
reports images/second per core: what one host core feeds. `--stages` also times
the pipeline cut after each of its stages (and its decode as it was, casting to
float32). The machine (CPU, its AVX-512/AVX512_BF16/AMX flags, cores, TensorFlow,
the policy --precision=auto picks here) is printed and written with the figures.
"""

import os
import statistics
import sys
import time

from absl import app
from absl import flags

import numpy as np

# TensorFlow, Keras and the trainer are imported inside the functions that time
# them: each loader is measured from a cold start of what it uses, and a flag
# error answers before TensorFlow's seconds of start-up.
from trainers.runs import run_folder  # plain Python: no TensorFlow

_FLAGS = flags.FLAGS


def _timed(contenders: dict, passes: int) -> dict:
  """{name: images/second of each pass} of `contenders` ({name: run}), alternated.

  Each `run` returns how many images it really produced (a loader that drops
  unreadable files, or whole batches, is not credited with them), or that count
  and the seconds of the part it times itself. All are warmed up once, then
  timed in turn, pass after pass.
  """
  for run in contenders.values():
    run()
  rates = {name: [] for name in contenders}
  for _ in range(passes):
    for name, run in contenders.items():
      start = time.perf_counter()
      count = run()
      count, seconds = count if isinstance(count, tuple) else (
          count, time.perf_counter() - start)
      rates[name].append(count / seconds)
  return rates


def _threaded(dataset, threads: int):
  """`dataset` on a private tf.data pool of `threads` threads, one thread per op."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  options.threading.max_intra_op_parallelism = 1
  return dataset.with_options(options)


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


def decode_ceiling(config, data_dir, image_size, batch_size, limit, threads=0):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  input_pipeline, builder, records = _split(config, data_dir)
  dataset = _in_memory(records, builder, limit).map(
      lambda data: input_pipeline.decode_and_resize(data, image_size, "crop"),
      num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
  # The pipeline's own tf.data options, so the two differ only in what they do.
  dataset = dataset.with_options(input_pipeline.stream_options(True)).prefetch(
      tf.data.AUTOTUNE)
  if threads:
    dataset = _threaded(dataset, threads)
  return lambda: _count(dataset)


def _in_memory(records, builder, limit):
  """`limit` encoded images of the split, spread over it, as a dataset in memory."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  every = max(1, builder.info.splits["train"].num_examples // limit)
  encoded = [record["image"] for record in records.shard(every, 0).take(limit)]
  return tf.data.Dataset.from_tensor_slices(tf.stack(encoded))


def _stream(builder, image_size, batch_size, **changes):
  """The trainer's stream settings for a whole-split epoch of `builder`'s train split."""
  from trainers.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from trainers.data import records as records_lib  # pylint: disable=g-import-not-at-top
  count = builder.info.splits["train"].num_examples
  settings = dict(batch_size=batch_size, steps_per_epoch=max(1, count // batch_size),
                  epochs=1, image_size=image_size,
                  record_bytes=records_lib.mean_record_bytes(builder), pass_records=count)
  return input_pipeline.TrainingStream(**{**settings, **changes})


def pipeline(config, data_dir, image_size, batch_size, cached, threads=0):
  """The trainer's pipeline over one whole epoch of the train split."""
  input_pipeline, builder, records = _split(config, data_dir)
  dataset = input_pipeline.training_batches(
      records, _stream(builder, image_size, batch_size, cache_decoded=cached))
  if threads:
    dataset = _threaded(dataset, threads)

  def run():
    return _count(dataset)
  if cached:
    run()  # fill the cache; _rate then warms up once more and times cached epochs
  return run


def pipeline_later(config, data_dir, image_size, batch_size):
  """The pipeline's second uncached epoch, timed alone: what each epoch after the first
  costs without --cache (one stream fills its shuffle buffer once, in the first)."""
  input_pipeline, builder, records = _split(config, data_dir)
  stream = _stream(builder, image_size, batch_size, epochs=2)
  dataset = input_pipeline.training_batches(records, stream)

  def run():
    batches = iter(dataset)
    for _ in range(stream.steps_per_epoch):
      next(batches)
    start = time.perf_counter()
    count = sum(int(images.shape[0]) for images, _ in batches)
    return count, time.perf_counter() - start
  return run


def stages(config, data_dir, image_size, batch_size, limit) -> dict:
  """{name: run} of the pipeline's first epoch cut after each stage, to see where its
  time goes: reading and parsing alone, then decoding image by image in record order
  (no shuffle), then the same after the shuffle, then the pipeline's own decode of
  whole batches without the rest of it, and that decode casting each image to float32
  (the pipeline until it handed uint8 batches to the model); and the ceiling decoded a
  batch at a time (the whole pipeline is `pipeline/<config>`)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  input_pipeline, builder, records = _split(config, data_dir)
  shuffled = records.shuffle(_stream(builder, image_size, batch_size).shuffle_buffer(), seed=0)

  def decoded(dataset):
    return _unordered(dataset.map(
        lambda record: input_pipeline.decode_and_resize(record["image"], image_size, "crop"),
        num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size))

  def batch_decoded(batches, decode=input_pipeline.decode_batch):
    return _unordered(batches.map(lambda data: decode(data, image_size, "crop"),
                                  num_parallel_calls=tf.data.AUTOTUNE))

  def float_decode(data, size, resize):
    return tf.map_fn(lambda one: tf.cast(input_pipeline.decode_and_resize(one, size, resize),
                                         tf.float32), data,
                     parallel_iterations=input_pipeline.PARALLEL_DECODES,
                     fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
  shuffled_images = shuffled.map(lambda record: record["image"]).batch(batch_size)
  chosen = {"read_parse": _unordered(records.map(lambda record: record["image"]).batch(
                batch_size)),
            "decode_in_order": decoded(records), "decode_shuffled": decoded(shuffled),
            "decode_shuffled_batches": batch_decoded(shuffled_images),
            "decode_shuffled_batches_float32": batch_decoded(shuffled_images, float_decode),
            "ceiling_batches": batch_decoded(_in_memory(records, builder, limit).batch(
                batch_size))}
  return {f"stage/{config}/{name}": (lambda dataset=dataset: _count(
      dataset.prefetch(tf.data.AUTOTUNE))) for name, dataset in chosen.items()}


def _unordered(dataset):
  """The pipeline's tf.data options: parallel stages free to hand out elements as they
  finish (its default), no model-based autotuning."""
  from trainers.data import input_pipeline  # pylint: disable=g-import-not-at-top
  return dataset.with_options(input_pipeline.stream_options(False))


def measure(manual_dir, data_dir, image_size=100, batch_size=64, limit=2048, passes=3,
            configs=("160px", "full"), threads=(), with_stages=False) -> dict:
  """Every figure of the benchmark (median images/second), their spread, the target
  ratios, the per-core figures, and the machine."""
  from trainers.training import devices  # pylint: disable=g-import-not-at-top
  files = _raw_files(manual_dir, min(limit, 512))  # the slow loop gets fewer files
  contenders = {"seed_loader": seed_loader(files, image_size),
                "directory_loader": directory_loader(manual_dir, image_size, batch_size, limit)}
  for config in configs:
    contenders[f"decode_ceiling/{config}"] = decode_ceiling(config, data_dir, image_size,
                                                            batch_size, limit)
    contenders[f"pipeline/{config}"] = pipeline(config, data_dir, image_size, batch_size, False)
    contenders[f"pipeline_cached/{config}"] = pipeline(config, data_dir, image_size,
                                                       batch_size, True)
    contenders[f"pipeline_later/{config}"] = pipeline_later(config, data_dir, image_size,
                                                            batch_size)
    if with_stages:
      contenders.update(stages(config, data_dir, image_size, batch_size, limit))
    for count in threads:
      contenders[f"decode_ceiling/{config}/{count}_threads"] = decode_ceiling(
          config, data_dir, image_size, batch_size, limit, threads=count)
      contenders[f"pipeline/{config}/{count}_threads"] = pipeline(
          config, data_dir, image_size, batch_size, False, threads=count)
  rates = _timed(contenders, passes)
  results = {name: statistics.median(values) for name, values in rates.items()}
  results["spread"] = {name: {"min": min(values), "max": max(values), "passes": values}
                       for name, values in rates.items()}
  ratios = {}
  for config in configs:
    ratios[f"pipeline/decode_ceiling/{config}"] = (results[f"pipeline/{config}"]
                                                   / results[f"decode_ceiling/{config}"])
    ratios[f"pipeline/directory_loader/{config}"] = (results[f"pipeline/{config}"]
                                                     / results["directory_loader"])
    ratios[f"pipeline_later/decode_ceiling/{config}"] = (
        results[f"pipeline_later/{config}"] / results[f"decode_ceiling/{config}"])
    if with_stages:  # against the ceiling decoded a batch at a time, as the pipeline does
      ratios[f"pipeline/ceiling_batches/{config}"] = (
          results[f"pipeline/{config}"] / results[f"stage/{config}/ceiling_batches"])
  ratios["pipeline/seed_loader"] = results[f"pipeline/{configs[0]}"] / results["seed_loader"]
  ratios["pipeline_cached/directory_loader"] = (results[f"pipeline_cached/{configs[0]}"]
                                                / results["directory_loader"])
  results["ratios"] = ratios
  results["per_core"] = {f"{kind}/{config}/{count}_threads": results[
      f"{kind}/{config}/{count}_threads"] / count
                         for config in configs for count in threads
                         for kind in ("decode_ceiling", "pipeline")}
  results["machine"] = devices.machine(devices.resolve_precision("auto", "auto"))
  return results


def _define_flags():
  flags.DEFINE_string("manual_dir", None, "A raw-img tree (tools.make_sample).", required=True)
  flags.DEFINE_string("data_dir", None, "Its built TFDS data_dir.", required=True)
  flags.DEFINE_integer("image_size", 100, "Output side.")
  flags.DEFINE_integer("batch_size", 64, "Batch size.")
  flags.DEFINE_integer("limit", 2048, "Images per pass.")
  flags.DEFINE_integer("passes", 7, "Timed passes (median).")
  flags.DEFINE_list("configs", ["160px", "full"], "Dataset configs to measure.")
  flags.DEFINE_list("threads", [], "Also time the ceiling and the pipeline on tf.data pools "
                    "of these sizes (e.g. 1,2) and report images/second per core.")
  flags.DEFINE_bool("stages", False, "Also time the pipeline cut after each stage (read and "
                    "parse, decode, shuffle, batch decode): where its time goes.")
  flags.DEFINE_string("json", None, "Write the figures here.")


def main(argv):
  from trainers import cli  # pylint: disable=g-import-not-at-top
  cli.no_arguments(argv)
  cli.quiet_logs()
  try:
    threads = tuple(int(count) for count in _FLAGS.threads)
  except ValueError:
    threads = (0,)
  if _FLAGS.passes < 1:
    sys.exit(f"bench_input: --passes takes 1 or more timed passes, got {_FLAGS.passes}.")
  if any(count < 1 for count in threads):
    sys.exit(f"bench_input: --threads takes thread counts of 1 or more, got "
             f"{','.join(_FLAGS.threads)}.")
  if _FLAGS.json and not run_folder.free_or_ours(_FLAGS.json, "machine"):
    sys.exit(f"bench_input: --json={_FLAGS.json} is not a figures file of ours (left as it "
             "is): choose another --json.")
  results = measure(_FLAGS.manual_dir, _FLAGS.data_dir, _FLAGS.image_size,
                    _FLAGS.batch_size, _FLAGS.limit, _FLAGS.passes, tuple(_FLAGS.configs),
                    threads, _FLAGS.stages)
  from trainers.training import devices  # pylint: disable=g-import-not-at-top
  print(devices.machine_line(results["machine"]) + " (the policy --precision=auto picks)")
  print(f"{'loader':36s} {'images/s':>10s}   spread of {_FLAGS.passes} alternated passes")
  for key, spread in results["spread"].items():
    print(f"{key:36s} {results[key]:10.0f}   {spread['min']:.0f}-{spread['max']:.0f}")
  for key, value in results["ratios"].items():
    print(f"{key:36s} {value:10.2f}x")
  for key, value in results["per_core"].items():
    print(f"{key + ' per core':36s} {value:10.0f}")
  if _FLAGS.json:
    run_folder.write_json(_FLAGS.json, results)


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  _define_flags()
  app.run(main)
