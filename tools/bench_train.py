r"""Training throughput and memory of cnn2, fed by our pipeline; or a transfer
model's frozen or fine-tuning phase, plain against cached activations (`--model`).

    python -m tools.bench_train --data_dir=work/tensorflow_datasets \
        [--rss_data_dirs=SMALL_DATA_DIR,FULL_DATA_DIR] --json=bench_train.json
    python -m tools.bench_train --data_dir=work/tensorflow_datasets --model=dn121 [--fine_tune]

With --model (mnv2, mnv2_035, enb3 or dn121, weights=None, the `auto` precision), one run
measures side by side: the plain phase (the whole model fit on decoded batches;
with --fine_tune, its top --fine_tune_layers backbone layers unfrozen), one
extraction pass (images to the pooled features, or to the tensors crossing the
fine-tuning cut), and what sits above the cut (the head, or the unfrozen top and
the head) fit and predicting on those activations, each the median over
--passes epochs after a traced one; then the 10-epoch wall time of the data
set's train split both ways (see `projection`), and the multiply-adds of one
image's forward pass below and above the cut.

For each precision policy this machine has hardware for (or each of --precisions:
all three run on any CPU, the mixed ones emulated where it lacks the units), side
by side in one run: images/second of cnn2 (or
--cnn=cnn4) fed by
`trainers.data.input_pipeline` (first epoch, decoding; and with --cache, after the
cache is filled) and fed from one in-memory batch (no input work at all); the
input stall is 1 - pipeline/in-memory, and the arithmetic rate in memory
(GFLOP/s: 2 x 3 x the multiply-adds of a forward pass, per image). Then peak resident memory of
one full epoch, in a fresh process per dataset, to show it does not grow with
the dataset size.
"""

import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

from trainers.runs import run_folder  # pylint: disable=g-import-not-at-top

from trainers import config as config_lib  # plain Python: no TensorFlow
# TensorFlow, Keras and the trainer are imported inside the functions: the
# --rss_child process measures its own peak memory from a clean start, and a flag
# error answers before TensorFlow's seconds of start-up.

_FLAGS = flags.FLAGS


def precisions() -> list[str]:
  """float32, plus the mixed policies this machine has hardware for."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from trainers.training import devices  # pylint: disable=g-import-not-at-top
  available = ["float32"]
  if devices.cpu_has_bf16() or tf.config.list_physical_devices("GPU"):
    available.append("mixed_bfloat16")
  if tf.config.list_physical_devices("GPU"):
    available.append("mixed_float16")
  auto = devices.resolve_precision("auto", "auto")  # forced by ANIMALS10_AUTO_PRECISION too
  if auto not in available:
    available.append(auto)
  return available


def _model(precision, image_size, name="cnn2"):
  import keras  # pylint: disable=g-import-not-at-top
  from trainers.modeling import models  # pylint: disable=g-import-not-at-top
  keras.mixed_precision.set_global_policy(precision)
  model = models.build_model(name, image_size, weights=None)
  model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
  return model


def multiply_adds(model) -> int:
  """Multiply-adds of one image's forward pass through the model's Conv2D,
  DepthwiseConv2D and Dense layers, nested models included (the rest, such as
  normalization, pooling and activations, moves memory more than it computes)."""
  import keras  # pylint: disable=g-import-not-at-top
  total = 0
  for layer in model.layers:
    if isinstance(layer, keras.layers.DepthwiseConv2D):
      height, width, channels = layer.output.shape[1:]
      kernel = layer.kernel.shape  # (rows, columns, in, multiplier)
      total += height * width * kernel[0] * kernel[1] * channels
    elif isinstance(layer, keras.layers.Conv2D):
      height, width, _ = layer.output.shape[1:]
      kernel = layer.kernel.shape  # (rows, columns, in, out)
      total += height * width * kernel[0] * kernel[1] * kernel[2] * kernel[3]
    elif isinstance(layer, keras.layers.Dense):
      total += layer.kernel.shape[0] * layer.kernel.shape[1]
    elif isinstance(layer, keras.Model):
      total += multiply_adds(layer)
  return total


class _EpochTimer:
  """Wall time of every epoch of one `fit` (one stream, no restarts)."""

  def __init__(self):
    import keras  # pylint: disable=g-import-not-at-top

    class Callback(keras.callbacks.Callback):

      def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

      def on_epoch_end(self, epoch, logs=None):
        seconds.append(time.perf_counter() - self.start)

    seconds = []
    self.seconds = seconds
    self.callback = Callback()


def _timed_fit(model, dataset, steps, passes):
  """Median batches/second over epochs 2.. of one fit (epoch 1 traces)."""
  timer = _EpochTimer()
  model.fit(dataset, epochs=passes + 1, steps_per_epoch=steps, verbose=0, shuffle=False,
            callbacks=[timer.callback])
  return steps / statistics.median(timer.seconds[1:])


def throughput(data_dir, precision, image_size=100, batch_size=32, steps=40, passes=3,
               cnn="cnn2"):
  """Images/second of a study CNN under `precision`, fed three ways."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from trainers.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from trainers.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  from trainers.data import records as records_lib  # pylint: disable=g-import-not-at-top
  builder = dataset_lib.builder(config_lib.DATASET, data_dir)
  records = records_lib.records(builder, "train")
  stream = input_pipeline.TrainingStream(
      batch_size=batch_size, steps_per_epoch=steps, epochs=passes + 1,
      image_size=image_size, record_bytes=records_lib.mean_record_bytes(builder),
      pass_records=builder.info.splits["train"].num_examples)
  fed = input_pipeline.training_batches(records, stream)
  # --cache: an epoch's worth of records, decoded once during the traced epoch.
  cached = input_pipeline.training_batches(records.take(steps * batch_size),
                                           dataclasses.replace(stream, cache_decoded=True))
  batch = next(iter(fed))
  in_memory = tf.data.Dataset.from_tensors(batch).repeat()
  model = _model(precision, image_size, cnn)
  return {name: _timed_fit(model, dataset, steps, passes) * batch_size
          for name, dataset in (("pipeline", fed), ("pipeline_cached", cached),
                                ("in_memory", in_memory))}


def epoch_peak_rss(data_dir, image_size=100, batch_size=32) -> dict:
  """Trains one full cnn2 epoch in a fresh process; its peak RSS in MiB and size."""
  output = subprocess.run(
      [sys.executable, "-m", "tools.bench_train", "--rss_child", f"--data_dir={data_dir}",
       f"--image_size={image_size}", f"--batch_size={batch_size}"],
      capture_output=True, text=True, check=True,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")).stdout
  return json.loads(output.strip().splitlines()[-1])


def _rss_child(data_dir, image_size, batch_size):
  from trainers.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from trainers.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  from trainers.data import records as records_lib  # pylint: disable=g-import-not-at-top
  builder = dataset_lib.builder(config_lib.DATASET, data_dir)
  records = records_lib.records(builder, "train")
  images = builder.info.splits["train"].num_examples
  steps = images // batch_size
  dataset = input_pipeline.training_batches(records, input_pipeline.TrainingStream(
      batch_size=batch_size, steps_per_epoch=steps, epochs=1, image_size=image_size,
      record_bytes=records_lib.mean_record_bytes(builder), pass_records=images))
  _model("float32", image_size).fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0,
                                   shuffle=False)
  print(json.dumps({"train_images": images, "peak_rss_mib": peak_rss_mib()}))


def peak_rss_mib() -> float:
  """This process's peak resident memory since its exec (VmHWM).

  Not getrusage's ru_maxrss: Linux carries that over from the forked parent
  across exec, so every child reported the benchmark parent's 1,379 MiB.
  """
  with open("/proc/self/status") as status:
    for line in status:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(data_dir, rss_data_dirs=(), steps=40, passes=3, image_size=100,
            batch_size=32, cnn="cnn2", policies=()) -> dict:
  """Every figure of the benchmark (see the module docstring); `policies` default to
  `precisions()`."""
  results = {"model": cnn}
  # A training step is a forward pass and a backward pass of about twice its cost.
  flops_per_image = 2 * 3 * multiply_adds(_model("float32", image_size, cnn))
  results["train_gflop_per_image"] = flops_per_image / 1e9
  policies = list(policies) or precisions()
  for precision in policies:
    rates = throughput(data_dir, precision, image_size, batch_size, steps, passes, cnn)
    for name, rate in rates.items():
      results[f"{name}/{precision}"] = rate
    results[f"in_memory_gflops/{precision}"] = rates["in_memory"] * flops_per_image / 1e9
    results[f"input_stall/{precision}"] = max(0.0, 1 - rates["pipeline"] / rates["in_memory"])
    results[f"input_stall_cached/{precision}"] = max(
        0.0, 1 - rates["pipeline_cached"] / rates["in_memory"])
  from trainers.training import devices  # pylint: disable=g-import-not-at-top
  auto = devices.resolve_precision("auto", "auto")
  results["auto_precision"] = auto
  if f"pipeline/{auto}" in results and "pipeline/float32" in results:
    results["auto_vs_float32"] = results[f"pipeline/{auto}"] / results["pipeline/float32"]
  for index, rss_dir in enumerate(rss_data_dirs):
    results[f"epoch_rss/{index}"] = epoch_peak_rss(rss_dir, image_size, batch_size)
  if len(rss_data_dirs) == 2:
    results["rss_ratio_large_vs_small"] = (results["epoch_rss/1"]["peak_rss_mib"]
                                           / results["epoch_rss/0"]["peak_rss_mib"])
  return results


def transfer(data_dir, model_name, image_size=100, batch_size=32, steps=20, passes=3,
             epochs=10, fine_tune=False, fine_tune_layers=30) -> dict:
  """Images/second of a transfer model's frozen phase (or, with `fine_tune`, its
  fine-tuning phase), plain and on cached activations, side by side."""
  import keras  # pylint: disable=g-import-not-at-top
  from trainers.training import devices  # pylint: disable=g-import-not-at-top
  from trainers.training import feature_cache  # pylint: disable=g-import-not-at-top
  from trainers.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from trainers.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  from trainers.data import records as records_lib  # pylint: disable=g-import-not-at-top
  from trainers.data import split_plan  # pylint: disable=g-import-not-at-top
  from trainers.modeling import cutting  # pylint: disable=g-import-not-at-top
  from trainers.modeling import models  # pylint: disable=g-import-not-at-top
  from trainers.training import recipe  # pylint: disable=g-import-not-at-top
  precision = devices.resolve_precision("auto", "auto")
  keras.mixed_precision.set_global_policy(precision)
  builder = dataset_lib.builder(config_lib.DATASET, data_dir)
  records = records_lib.records(builder, "train").take(steps * batch_size)
  stream = input_pipeline.TrainingStream(
      batch_size=batch_size, steps_per_epoch=steps, epochs=passes + 1, image_size=image_size,
      record_bytes=records_lib.mean_record_bytes(builder), pass_records=steps * batch_size)
  model = models.build_model(model_name, image_size, weights=None)
  if fine_tune:
    models.unfreeze_top(model, fine_tune_layers)
    extractor, top = cutting.split_at_cut(model, fine_tune_layers)
  else:
    extractor, top = cutting.split_at_pool(model)
  recipe.compile_for_training(model, recipe.Recipe(1e-3))
  plain = _timed_fit(model, input_pipeline.training_batches(records, stream), steps, passes)
  plan = split_plan.EvalPlan(steps * batch_size, batch_size)
  extraction, activations = _timed_predict(
      extractor, input_pipeline.eval_batches(records, plan, image_size=image_size), passes)
  labels, _ = records_lib.labels_and_names(records)
  cached = feature_cache.SplitFeatures(
      [array[:len(labels)] for array in activations], labels)
  recipe.compile_for_training(top, recipe.Recipe(1e-3))
  top_rate = _timed_fit(top, input_pipeline.feature_training_batches(
      cached.indexed(), cached.lookup, stream), steps, passes)
  top_inference, _ = _timed_predict(top, input_pipeline.feature_eval_batches(
      cached.indexed(), cached.lookup, plan), passes)
  train = builder.info.splits["train"].num_examples
  validation = builder.info.splits["validation"].num_examples
  rates = {"plain": plain * batch_size, "extraction": extraction * steps * batch_size,
           "top": top_rate * batch_size, "top_inference": top_inference * steps * batch_size}
  return {"model": model_name, "phase": "fine_tune" if fine_tune else "train",
          "cut": [list(output.shape[1:]) for output in extractor.outputs],
          # Per image, forward: what the cached path skips, and what it still runs.
          "below_cut_multiply_adds": multiply_adds(extractor),
          "above_cut_multiply_adds": multiply_adds(top),
          "precision": precision, "image_size": image_size,
          **{f"{name}_images_per_second": rate for name, rate in rates.items()},
          "train_images": train, "validation_images": validation,
          **projection(rates, train, validation, epochs)}


def _timed_predict(model, batches, passes):
  """(Median passes/second of `model.predict` over `batches` after a traced pass,
  the outputs as a list of arrays)."""
  seconds = []
  for _ in range(passes + 1):  # the first pass traces
    started = time.perf_counter()
    outputs = model.predict(batches, verbose=0)
    seconds.append(time.perf_counter() - started)
  return 1 / statistics.median(seconds[1:]), (
      list(outputs) if isinstance(outputs, (list, tuple)) else [outputs])


def projection(rates: dict, train: int, validation: int, epochs: int) -> dict:
  """Seconds of `epochs` epochs of the phase both ways, from measured images/second.

  plain = epochs x (train / plain + validation / extraction): the whole model
  trains on decoded images, and validation runs the backbone every epoch (the
  extraction rate stands for it: the frozen part costs most of a forward pass);
  cached = (train + validation) / extraction + epochs x (train / top +
  validation / top_inference): one extraction pass, then only what sits above
  the cut (the head, or the unfrozen top and the head) trains and validates.
  """
  plain_seconds = epochs * (train / rates["plain"] + validation / rates["extraction"])
  cached_seconds = ((train + validation) / rates["extraction"]
                    + epochs * (train / rates["top"] + validation / rates["top_inference"]))
  return {f"plain_{epochs}_epochs_seconds": plain_seconds,
          f"cached_{epochs}_epochs_seconds": cached_seconds,
          "speedup": plain_seconds / cached_seconds}


def _define_flags():
  flags.DEFINE_string("data_dir", None, "A built TFDS data_dir.", required=True)
  # A string checked against the registry in main: importing the registry here would
  # import Keras before the --rss_child process measures its memory from a clean start.
  flags.DEFINE_string("model", None, "Benchmark this transfer model of the registry (its "
                      "frozen phase) instead of cnn2.")
  flags.DEFINE_bool("fine_tune", False, "With --model: its fine-tuning phase (the top "
                    "--fine_tune_layers layers and the head on cached activations at the cut).")
  flags.DEFINE_integer("fine_tune_layers", 30, "With --fine_tune: backbone layers unfrozen.",
                       lower_bound=1)
  flags.DEFINE_enum("cnn", "cnn2", ["cnn2", "cnn4"], "Without --model: the study CNN to time.")
  flags.DEFINE_list("precisions", [], "Without --model: the policies to time, side by side "
                    "(float32, mixed_bfloat16, mixed_float16); default: float32 and those this "
                    "machine has hardware for, and what --precision=auto picks.")
  flags.DEFINE_list("rss_data_dirs", [], "Two data_dirs (small, large) for the memory check.")
  flags.DEFINE_integer("steps", 40, "Batches per timed epoch.")
  flags.DEFINE_integer("passes", 3, "Timed passes (median).")
  flags.DEFINE_integer("image_size", 100, "Input side.")
  flags.DEFINE_integer("batch_size", 32, "Batch size.")
  flags.DEFINE_bool("rss_child", False, "Internal: run one epoch and print peak RSS.")
  flags.DEFINE_string("json", None, "Write the figures here.")


def main(argv):
  del argv
  if _FLAGS.json and not run_folder.free_or_ours(_FLAGS.json, "machine"):
    sys.exit(f"bench_train: --json={_FLAGS.json} is not a figures file of ours (left as it "
             "is): choose another --json.")
  if _FLAGS.rss_child:
    _rss_child(_FLAGS.data_dir, _FLAGS.image_size, _FLAGS.batch_size)
    return
  if _FLAGS.model:
    from trainers.modeling import cutting  # pylint: disable=g-import-not-at-top
    from trainers.modeling import models  # pylint: disable=g-import-not-at-top
    transfer_models = sorted(name for name, spec in models.REGISTRY.items() if spec.backbone)
    if _FLAGS.model not in transfer_models:
      sys.exit(f"bench_train: --model={_FLAGS.model} is not a transfer model of the registry; "
               f"choose one of {', '.join(transfer_models)}.")
    try:
      results = transfer(_FLAGS.data_dir, _FLAGS.model, _FLAGS.image_size, _FLAGS.batch_size,
                         _FLAGS.steps, _FLAGS.passes, fine_tune=_FLAGS.fine_tune,
                         fine_tune_layers=_FLAGS.fine_tune_layers)
    except cutting.CutError as error:
      sys.exit(f"bench_train: no cut to cache at: {error}; choose a smaller --fine_tune_layers.")
  else:
    from trainers.training import devices  # pylint: disable=g-import-not-at-top
    unknown = sorted(set(_FLAGS.precisions) - set(devices.POLICIES))
    if unknown:
      sys.exit(f"bench_train: --precisions={','.join(unknown)} is not among "
               f"{', '.join(devices.POLICIES)}.")
    results = measure(_FLAGS.data_dir, tuple(_FLAGS.rss_data_dirs), _FLAGS.steps,
                      _FLAGS.passes, _FLAGS.image_size, _FLAGS.batch_size, _FLAGS.cnn,
                      _FLAGS.precisions)
  from trainers.training import devices  # pylint: disable=g-import-not-at-top
  # Each figure's key names its policy; the machine's entry names what auto picks.
  results["machine"] = devices.machine(devices.resolve_precision("auto", "auto"))
  print(devices.machine_line(results["machine"]) + " (the policy --precision=auto picks)")
  for key, value in results.items():
    if key != "machine":
      print(f"{key:32s} {value if isinstance(value, (str, dict, list)) else f'{value:.2f}'}")
  if _FLAGS.json:
    run_folder.write_json(_FLAGS.json, results)


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  _define_flags()
  app.run(main)
