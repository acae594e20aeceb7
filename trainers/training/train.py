"""`train_and_evaluate(config)`: one run, from TFRecords to a finished run folder.

Precision is set once before anything is built; the model is built and compiled
in one place, inside `strategy.scope()`. A rerun of the same config resumes a
killed run from its last finished epoch (BackupAndRestore in the run folder).

Under --strategy=multi_worker every worker runs the same function: each reads
its own share of the records, only the chief writes the run folder (the others
restore from it and keep their own state in a scratch folder they delete), and
only the chief evaluates, once, over the whole test split.
"""

import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from trainers.data import batches
from trainers.training import callbacks as callbacks_lib
from trainers import config as config_lib
from trainers.runs import settings as settings_lib
from trainers.training import devices
from trainers.training import feature_cache
from trainers.data import input_pipeline
from trainers.data import dataset as dataset_lib
from trainers.data import records as records_lib
from trainers.data import split_plan
from trainers.modeling import keras_compat
from trainers.modeling import models
from trainers.modeling import cutting
from trainers.training import recipe as recipe_lib
from trainers.evaluation import results
from trainers.runs import run_folder
from trainers.runs import run_lock
from trainers.runs import run_paths
from trainers.modeling import weights as weights_lib


@dataclasses.dataclass(frozen=True)
class _Phase:
  name: str
  epochs: int
  learning_rate: float
  epoch_offset: int


def train_and_evaluate(config: config_lib.Config, flagfile: Optional[str] = None) -> dict:
  """Trains, evaluates on the test split and writes the run folder.

  The chief holds the run folder's lock (`run_lock`) throughout: a second
  process on the same folder stops with one line.

  Args:
    config: a `trainers.config.Config`.
    flagfile: the command line's flags, written to RUN/flags.txt once the lock
      is held (`trainers.main` passes them).

  Returns:
    The metrics written to metrics.json.

  Raises:
    ValueError: with a sentence saying what to change, for bad input.
  """
  started = time.time()
  devices.split_cpu(config.virtual_devices)
  precision = _set_up_process(config, config.strategy)
  role = devices.role(config.strategy)
  strategy = devices.make_strategy(config.strategy, config.tpu, config.cluster_timeout, role)
  keras_compat.fix_symbolic_build()
  if role.num_workers > 1:
    keras_compat.fix_multi_worker_logs()
  replicas = strategy.num_replicas_in_sync
  if config.batch_size % replicas:
    raise ValueError(f"--batch_size={config.batch_size} does not divide by the "
                     f"{replicas} replicas: use a multiple of {replicas}.")
  with run_lock.hold(config.model_dir) if role.is_chief else contextlib.nullcontext():
    try:
      return _train_and_evaluate(config, strategy, role, precision, started, flagfile)
    except tf.errors.OpError as error:  # the backup of the last finished epoch stays
      damaged = dataset_lib.damaged(
          dataset_lib.builder(config.dataset, config.data_dir), error, config.data_dir)
      if damaged:
        raise damaged from None
      raise


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A run's model and streams, built as `train_and_evaluate` builds them, untrained."""

  model: keras.Model
  data: batches.WorkerBatches
  precision: str


def prepare(config: config_lib.Config) -> Prepared:
  """The model and data of a run on this process's default device, for a tool that
  trains them its own way (`tools.lr_find`). Seeds, determinism and the precision
  policy are set as for a run; nothing is written to the run folder.

  Raises:
    ValueError: one line, as `train_and_evaluate` gives it, for a bad weights file
      or a split plan that cannot be made.
  """
  precision = _set_up_process(config, "one_device")
  weights = weights_lib.resolve(config.model, config.weights, config.image_size)
  strategy = tf.distribute.get_strategy()
  data = _worker_batches(config, strategy, devices.role("one_device"))
  with strategy.scope():
    model = build(config, weights)
  return Prepared(model, data, precision)


def _set_up_process(config: config_lib.Config, strategy: str) -> str:
  """Seeds, op determinism and the precision policy, before anything is built;
  returns the policy."""
  keras.utils.set_random_seed(config.seed)
  if config.deterministic:
    tf.config.experimental.enable_op_determinism()
  precision = devices.resolve_precision(config.precision, strategy)
  keras.mixed_precision.set_global_policy(precision)
  return precision


@dataclasses.dataclass(frozen=True)
class _Run:
  """What every step of one process's run needs, decided once."""

  config: config_lib.Config
  role: devices.Role
  data: batches.WorkerBatches
  settings_sha256: str
  paths: run_paths.RunPaths  # the run folder (the chief's)
  writes_to: run_paths.RunPaths  # where this process writes: the run folder, or a scratch one


def _train_and_evaluate(config: config_lib.Config, strategy, role: devices.Role, precision: str,
                        started: float, flagfile: Optional[str]) -> dict:
  """`train_and_evaluate` once the run folder is this process's."""
  finished = results.finished(config.model_dir)
  if finished is not None:
    if role.is_chief:
      settings_lib.check_finished(config, finished)
    print(f"{config.model_dir} already holds a finished run (use a new --model_dir to "
          f"train again): {results.summary_row(finished)}")
    return finished
  # Checked before any data is planned or model built: a bad file is one line.
  weights = weights_lib.resolve(config.model, config.weights, config.image_size)
  if role.is_chief:
    _record_settings(config, flagfile)
  scratch = None if role.is_chief else tempfile.mkdtemp(prefix=f"animals10-worker{role.index}-")
  try:
    run = _Run(config, role, _worker_batches(config, strategy, role),
               settings_lib.settings_sha256(config), run_paths.RunPaths(config.model_dir),
               run_paths.RunPaths(scratch or config.model_dir))
    result = _train_then_evaluate(run, weights, precision)
  except devices.PEER_ERRORS as error:
    if role.num_workers == 1:
      raise
    raise _peer_lost(role, error) from None
  finally:
    if scratch:
      shutil.rmtree(scratch, ignore_errors=True)
  if result is not None:
    print(f"{config.model} ({precision}, {strategy.num_replicas_in_sync} replica(s), "
          f"{time.time() - started:.0f} s): {results.summary_row(result)} -> {config.model_dir}")
  return result


def _record_settings(config: config_lib.Config, flagfile: Optional[str]):
  """The chief checks the run folder's work so far is this config's, then records it."""
  settings_lib.check_resumable(config)
  settings_lib.save(config)
  if flagfile is not None:
    run_folder.atomic_write(run_paths.RunPaths(config.model_dir).flags, flagfile.encode())


def _worker_batches(config: config_lib.Config, strategy,
                    role: devices.Role) -> batches.WorkerBatches:
  """The split plan of the run, and this worker's streams of it."""
  dataset_builder = dataset_lib.builder(config.dataset, config.data_dir)
  plan = split_plan.plan_of_run(config, dataset_builder, role.num_workers)
  if config.exclude and role.is_chief:
    print(f"--exclude: left out {plan.excluded['train']} train, "
          f"{plan.excluded['validation']} validation and {plan.excluded['test']} test "
          f"records of the {len(config.exclude)} listed (list SHA-256 "
          f"{config.exclude_sha256[:12]}...)", flush=True)
  return batches.WorkerBatches(config, strategy, dataset_builder, plan)


def _train_then_evaluate(run: _Run, weights: Optional[str], precision: str) -> Optional[dict]:
  """Every phase, then (the chief) the test split; None on the other workers."""
  config, role, strategy = run.config, run.role, run.data.strategy
  with strategy.scope():
    model = build(config, weights)
  phases = [_Phase("train", config.epochs, config.learning_rate, 0)]
  if config.fine_tune:
    phases.append(_Phase("fine_tune", config.fine_tune_epochs,
                         config.fine_tune_learning_rate, config.epochs))
  clocks = {}
  for phase in phases:
    if phase.name == "fine_tune":
      with strategy.scope():
        models.unfreeze_top(model, config.fine_tune_layers)
    clocks[phase.name] = _fit(model, phase, run)
  with strategy.scope():  # every worker: under multi-worker, compiling is collective
    recipe_lib.compile_for_saving(model)
  result = _evaluate(model, run, clocks, precision) if role.is_chief else None
  if role.num_workers > 1:
    steps = sum(clock["steps"] for clock in clocks.values())
    print(f"{role.name} of {role.num_workers}: {steps} training steps of "
          f"{run.data.worker_batch} images from its {run.data.plan.sharding} share of the "
          "train split", flush=True)
    devices.barrier(strategy)  # the others wait for the chief's evaluation
  return result


def _peer_lost(role: devices.Role, error: Exception) -> devices.PeerLostError:
  """One line for a worker whose cluster went away: what happened, and what to do."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [""]
  detail = next((line for line in lines if any(
      word in line.lower() for word in ("peer", "abort", "unhealthy", "closed"))), lines[0])
  return devices.PeerLostError(
      f"{role.name} lost its cluster ({type(error).__name__}: {detail[:200]}): restart "
      "every worker with the same command; training resumes from the last finished "
      "epoch.")


def build(config: config_lib.Config, weights: Optional[str]) -> keras.Model:
  """The registry model with `weights` (from `weights_lib.resolve`): None,
  "imagenet" (Keras downloads it) or a checked file, loaded after building so
  a file of another architecture is one line naming it."""
  try:
    model = models.build_model(config.model, config.image_size, head_units=config.head_units,
                               augment=config.augment, seed=config.seed,
                               weights="imagenet" if weights == "imagenet" else None)
  except Exception as error:  # pylint: disable=broad-except
    if weights == "imagenet" and weights_lib.download_failed(error):
      raise weights_lib.WeightsError(
          weights_lib.offline_message(config.model, config.image_size)) from None
    raise
  if weights not in (None, "imagenet"):
    weights_lib.load_into(models.backbone_of(model) or model, weights, config.model)
  return model


def _fit(model: keras.Model, phase: _Phase, run: _Run) -> dict:
  """Trains one phase, resuming from the run folder's backup; returns its clock.

  When `feature_cache.reason_not_cached` allows, a transfer model's phase
  trains on cached activations (same batches, same optimizer, same callbacks,
  on the same layer objects): the frozen phase its head on the pooled
  features, the fine-tuning phase its top (unfrozen backbone layers and head)
  on the tensors crossing the cut from the frozen bottom (`cutting.split_at_cut`).

  Returns:
    {"seconds", "images", "steps", "cached_features"} of the phase: wall time
    and images trained, summed over the processes that ran it (a resumed run
    adds its time to the time saved at the last finished epoch).
  """
  config, role, data = run.config, run.role, run.data
  done_path = run.paths.done_weights(phase.name)
  if os.path.exists(done_path):  # finished before a kill in a later phase
    model.load_weights(done_path)
    return callbacks_lib.PhaseClock.read(run.paths.clock(phase.name))
  started = time.time()
  trainee, features = _trainee(model, phase, run)
  _compile(trainee, phase, run)
  resume = callbacks_lib.phase_callbacks(
      trainee, paths=run.paths, writes_to=run.writes_to, phase=phase.name,
      epoch_offset=phase.epoch_offset, is_chief=role.is_chief, strategy=data.strategy,
      cached_features=bool(features), settings_sha256=run.settings_sha256,
      images_per_step=config.batch_size,
      early_stopping_patience=config.early_stopping_patience, started=started)
  validation, validation_steps = data.validation(features.get("validation"))
  if resume.stopped_early and role.is_chief:
    print(f"info: early stopping had ended the {phase.name} phase after epoch "
          f"{phase.epoch_offset + resume.first_epoch}; it stays ended.", flush=True)
  if resume.first_epoch < phase.epochs and not resume.stopped_early:
    trainee.fit(data.training(resume.first_epoch, phase.epochs, features.get("train")),
                validation_data=validation, validation_steps=validation_steps,
                epochs=phase.epochs, steps_per_epoch=data.steps, shuffle=False,
                callbacks=resume.callbacks,
                verbose=2 if os.environ.get("CI") or data.workers > 1 else "auto")
  else:  # every epoch restored from a backup: write the EMA in, as fit's end does
    with data.strategy.scope():
      recipe_lib.finalize(trainee)
  if role.is_chief:
    run_folder.replace_with(done_path, model.save_weights, suffix=".weights.h5",
                            expected_bytes=sum(weight.nbytes for weight in model.get_weights()))
  result = resume.clock.finish(resume.steps.count)
  if features:
    feature_cache.remove(run.writes_to.features(phase.name))
  return result


def _trainee(model: keras.Model, phase: _Phase, run: _Run) -> tuple[keras.Model, dict]:
  """What `fit` trains in a phase, and its cached activations ({} when none).

  The whole model, or (where the cache applies and the backbone can be cut) the
  part above its frozen layers, with their activations extracted once.
  """
  config, data = run.config, run.data
  reason = feature_cache.reason_not_cached(
      config, images_trained=phase.epochs * data.steps * config.batch_size,
      train_images=data.counts["train"] // config.batch_size * config.batch_size)
  if reason and models.REGISTRY[config.model].backbone is not None:
    print(f"info: {phase.name} phase trains end to end, features not cached: {reason}.",
          flush=True)
  if reason is not None:
    return model, {}
  with data.strategy.scope():  # models remember the strategy they are made in
    try:
      extractor, trainee = (cutting.split_at_pool(model) if phase.name == "train" else
                            cutting.split_at_cut(model, config.fine_tune_layers))
    except cutting.CutError as error:
      print(f"info: {phase.name} phase trains end to end, activations not cached: "
            f"{error}.", flush=True)
      return model, {}
  return trainee, _extract_features(extractor, run, run.writes_to.features(phase.name))


def _compile(trainee: keras.Model, phase: _Phase, run: _Run):
  """Compiles `trainee` with the phase's recipe, under the run's strategy."""
  recipe = recipe_lib.of_phase(run.config, phase.learning_rate, phase.epochs, run.data.steps)
  window = recipe_lib.ema_window(recipe)
  if window and window > recipe.steps / 4 and run.role.is_chief:
    print(f"info: --ema_momentum={run.config.ema_momentum} averages about {window:.0f} steps, "
          f"more than a quarter of the {phase.name} phase's {recipe.steps}: its early "
          "weights weigh in; a lower momentum suits a run this short.", flush=True)
  with run.data.strategy.scope():
    recipe_lib.compile_for_training(trainee, recipe)


def _extract_features(extractor: keras.Model, run: _Run, folder: str) -> dict:
  """This worker's cached features of the train and validation splits.

  Single host: the extractor runs under the run's strategy (every replica) on
  whole splits. Multi-worker: each worker extracts its own share of each split
  (the records its training and validation streams read) with a local copy of
  the extractor, so no worker waits for another.
  """
  data = run.data
  input_context = data.input_context()
  if input_context is not None:
    extractor = feature_cache.local_copy(extractor)
  started, images = time.time(), 0
  features = {}
  for split in ("train", "validation"):
    records = data.records(split, input_context, shard_files=split == "train")
    features[split] = feature_cache.extract(
        extractor, records, folder=folder, split=split,
        batch_size=data.worker_batch, image_size=run.config.image_size,
        resize=run.config.resize, settings_sha256=run.settings_sha256)
    images += len(features[split])
  seconds = time.time() - started
  cut = ", ".join(f"{tuple(output.shape[1:])}" for output in extractor.outputs)
  print(f"{run.role.name if data.workers > 1 else 'train'}: backbone activations {cut} of "
        f"{images} images ready in {seconds:.1f} s; the layers above train on them.",
        flush=True)
  return features


def _evaluate(model: keras.Model, run: _Run, clocks: dict, precision: str) -> dict:
  """Predicts the whole test split once and writes the run folder's results.

  The test batches are full and padded (see `split_plan.EvalPlan`), so any
  replica count evaluates every image exactly once; padded rows are dropped.
  Under multi-worker, the chief predicts with a local copy of the model (from
  the model.keras it saves), so no collective op waits for the other workers.
  """
  config, data = run.config, run.data
  model_path = results.save_model(config.model_dir, model)
  if data.workers > 1:
    model = keras.models.load_model(model_path)
  test_records = data.records("test")
  labels, names = records_lib.labels_and_names(test_records)
  plan = split_plan.EvalPlan(len(labels), config.batch_size)
  test_batches = input_pipeline.eval_batches(test_records, plan, image_size=config.image_size,
                                             resize=config.resize)
  probabilities = _predicted(model, test_batches, plan, len(labels))
  plain = None
  if config.tta:  # the original and its mirror image, averaged
    plain = probabilities
    probabilities = (plain + _predicted(model, test_batches.map(
        lambda images, *rest: (tf.reverse(images, axis=[2]), *rest)), plan, len(labels))) / 2
  evaluation = results.Evaluation(names, labels, probabilities, data.class_names, plain)
  # The policy the run trained and evaluated under (what --precision=auto picked):
  # results are bit-identical only within one policy on one kind of machine.
  return results.write_all(
      config.model_dir, evaluation, clocks=clocks, precision=precision,
      identity=results.identity(run.settings_sha256, data.builder, names),
      decode=lambda chosen: _decoded(data, config, chosen))


def _predicted(model: keras.Model, test_batches: tf.data.Dataset, plan: split_plan.EvalPlan,
               count: int) -> np.ndarray:
  """The model's probabilities of the first `count` examples of padded test batches."""
  probabilities = model.predict(test_batches, verbose=0)
  if len(probabilities) != plan.steps * plan.batch_size:
    raise RuntimeError(f"{len(probabilities)} test predictions for {plan.steps} batches of "
                       f"{plan.batch_size}")
  return probabilities[:count]


def _decoded(data: batches.WorkerBatches, config: config_lib.Config,
             names) -> list[np.ndarray]:
  """Test images by file name, decoded as the model saw them (for errors.png)."""
  if not names:
    return []
  records = records_lib.records(data.builder, "test", data.plan.filters, names)
  decoded = {}
  for name, image in records.map(lambda record: (
      record["file_name"], input_pipeline.decode_and_resize(
          record["image"], config.image_size, config.resize))):
    decoded[name.numpy().decode()] = image.numpy()
  return [decoded[name] for name in names]
