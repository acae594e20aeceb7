"""`train_and_evaluate(config)`: one run, from TFRecords to a finished run folder.

Precision is set once before anything is built; the model is built and compiled
in one place, inside `strategy.scope()`. A rerun of the same config resumes a
killed run from its last finished epoch (BackupAndRestore in the run folder).

Under --strategy=multi_worker every worker runs this same function: each reads
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

from trainers import callbacks as callbacks_lib
from trainers import config as config_lib
from trainers import devices
from trainers import feature_cache
from trainers import figures
from trainers import input_pipeline
from trainers import keras_compat
from trainers import models
from trainers import results
from trainers import run_folder
from trainers import run_lock


@dataclasses.dataclass(frozen=True)
class _Phase:
  name: str
  epochs: int
  learning_rate: float
  epoch_offset: int


def train_and_evaluate(config, flagfile: Optional[str] = None) -> dict:
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
  keras.utils.set_random_seed(config.seed)
  if config.deterministic:
    tf.config.experimental.enable_op_determinism()
  precision = devices.resolve_precision(config.precision, config.strategy)
  keras.mixed_precision.set_global_policy(precision)
  this = devices.role(config.strategy)
  strategy = devices.make_strategy(config.strategy, config.tpu, config.cluster_timeout, this)
  keras_compat.fix_symbolic_build()
  if this.num_workers > 1:
    keras_compat.fix_multi_worker_logs()
  replicas = strategy.num_replicas_in_sync
  if config.batch_size % replicas:
    raise ValueError(f"--batch_size={config.batch_size} does not divide by the "
                     f"{replicas} replicas: use a multiple of {replicas}.")
  with run_lock.hold(config.model_dir) if this.is_chief else contextlib.nullcontext():
    try:
      return _train_and_evaluate(config, strategy, this, precision, started, flagfile)
    except tf.errors.OpError as error:  # the backup of the last finished epoch stays
      damaged = input_pipeline.damaged(
          input_pipeline.builder(config.dataset, config.data_dir), error, config.data_dir)
      if damaged:
        raise damaged from None
      raise


def _train_and_evaluate(config, strategy, this: devices.Role, precision: str,
                        started: float, flagfile: Optional[str]) -> dict:
  """`train_and_evaluate` once the run folder is this process's."""
  replicas = strategy.num_replicas_in_sync
  finished = results.finished(config.model_dir)
  if finished is not None:
    print(f"{config.model_dir} already holds a finished run (use a new --model_dir to "
          f"train again): {results.summary_row(finished)}")
    return finished
  if this.is_chief:
    config_lib.check_resumable(config)
    config_lib.save(config)
    if flagfile is not None:
      run_folder.atomic_write(os.path.join(config.model_dir, "flags.txt"), flagfile.encode())

  scratch = None if this.is_chief else tempfile.mkdtemp(prefix=f"animals10-worker{this.index}-")
  try:
    dataset_builder = input_pipeline.builder(config.dataset, config.data_dir)
    data = _Data(config, strategy, dataset_builder, input_pipeline.plan(
        dataset_builder,
        input_pipeline.Filters(config.keep_formats, config.keep_modes, config.keep_orientations),
        config.balance, config.batch_size, this.num_workers, config.steps_per_epoch))
    with strategy.scope():
      model = _build(config)
    phases = [_Phase("train", config.epochs, config.learning_rate, 0)]
    if config.fine_tune:
      phases.append(_Phase("fine_tune", config.fine_tune_epochs,
                           config.fine_tune_learning_rate, config.epochs))
    clocks = {}
    for phase in phases:
      if phase.name == "fine_tune":
        with strategy.scope():
          models.unfreeze_top(model, config.fine_tune_layers)
      clocks[phase.name] = _fit(model, phase, data, config, this, scratch or config.model_dir)
    with strategy.scope():  # every worker: under multi-worker, compiling is collective
      models.compile_for_saving(model)
    result = _evaluate(model, data, config, clocks) if this.is_chief else None
    if this.num_workers > 1:
      steps = sum(clock["steps"] for clock in clocks.values())
      print(f"{this.name} of {this.num_workers}: {steps} training steps of "
            f"{data.worker_batch} images from its {data.plan.sharding} share of the train split",
            flush=True)
      devices.barrier(strategy)  # the others wait for the chief's evaluation
  except devices.PEER_ERRORS as error:
    if this.num_workers == 1:
      raise
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [""]
    detail = next((line for line in lines if any(
        word in line.lower() for word in ("peer", "abort", "unhealthy", "closed"))), lines[0])
    raise devices.PeerLostError(
        f"{this.name} lost its cluster ({type(error).__name__}: {detail[:200]}): restart "
        "every worker with the same command; training resumes from the last finished "
        "epoch.") from None
  finally:
    if scratch:
      shutil.rmtree(scratch, ignore_errors=True)
  if result is not None:
    print(f"{config.model} ({precision}, {replicas} replica(s), "
          f"{time.time() - started:.0f} s): {results.summary_row(result)} -> {config.model_dir}")
  return result


class _Data:
  """The run's datasets, as its `SplitPlan` says: the batches this worker feeds
  its replicas. Makes no decision and reads no record until asked for one."""

  def __init__(self, config, strategy, dataset_builder, split_plan: input_pipeline.SplitPlan):
    self.config, self.strategy = config, strategy
    self.builder, self.plan = dataset_builder, split_plan
    self.class_names = split_plan.class_names
    self.workers, self.worker_batch = split_plan.workers, split_plan.worker_batch
    self.counts, self.steps = split_plan.counts, split_plan.steps

  def records(self, split, input_context=None, shard_files=True):
    return input_pipeline.records(self.builder, split, self.plan.filters,
                                  self.plan.keep[split], input_context, shard_files)

  def training(self, first_epoch: int, epochs: int, features=None):
    """The training stream from `first_epoch` on, distributed when multi-worker.

    With `features` (this worker's cached `SplitFeatures` of the train split),
    the same stream of the features instead of the decoded images.
    """
    def batches(input_context=None):
      stream = input_pipeline.TrainingStream(
          batch_size=self.worker_batch, steps_per_epoch=self.steps, epochs=epochs,
          first_epoch=first_epoch, seed=self.config.seed, image_size=self.config.image_size,
          resize=self.config.resize, cache_decoded=self.config.cache,
          deterministic=self.config.deterministic, class_weight=self.plan.class_weight,
          replica_batch_size=(input_context.get_per_replica_batch_size(self.config.batch_size)
                              if input_context else None),
          record_bytes=input_pipeline.mean_record_bytes(self.builder))
      if features is not None:
        return input_pipeline.training_batches(features.dataset(), stream, decoded=True)
      return input_pipeline.training_batches(self.records("train", input_context), stream)
    if self.workers == 1:
      return batches()
    return self.strategy.distribute_datasets_from_function(batches)

  def validation(self, features=None):
    """(batches, steps): full batches padded with weight-0 examples, so every
    record counts exactly once on every strategy (see `input_pipeline.EvalPlan`);
    under multi-worker each worker takes every N-th record and all run `steps`.
    With `features` (this worker's cached validation features), of those."""
    plan = self.plan.eval_plan("validation")

    def batches(input_context=None):
      source = (features.dataset() if features is not None else
                self.records("validation", input_context, shard_files=False))
      return input_pipeline.eval_batches(
          source, plan, image_size=self.config.image_size, resize=self.config.resize,
          cache_decoded=self.config.cache and features is None,
          worker=input_context.input_pipeline_id if input_context else 0,
          replica_batch_size=(input_context.get_per_replica_batch_size(self.config.batch_size)
                              if input_context else None),
          decoded=features is not None)
    if self.workers == 1:
      return batches(), None
    return self.strategy.distribute_datasets_from_function(batches), plan.steps

  def input_context(self) -> Optional[tf.distribute.InputContext]:
    """This worker's InputContext under multi-worker (None otherwise), as
    `distribute_datasets_from_function` hands it out."""
    if self.workers == 1:
      return None
    contexts = []

    def capture(input_context):
      contexts.append(input_context)
      return tf.data.Dataset.range(1)
    self.strategy.distribute_datasets_from_function(capture)
    return contexts[0]


def _build(config) -> keras.Model:
  weights = None if config.weights.lower() == "none" else config.weights
  if weights not in (None, "imagenet") and not os.path.exists(weights):
    raise ValueError(f"--weights={weights}: no such file. Use imagenet, none or a "
                     "weights file path.")
  if weights == "imagenet" and models.REGISTRY[config.model].backbone is None:
    weights = None  # the study's CNNs have no pretrained weights
  try:
    return models.build_model(config.model, config.image_size, head_units=config.head_units,
                              augment=config.augment, weights=weights, seed=config.seed)
  except Exception as error:  # pylint: disable=broad-except
    if weights == "imagenet" and "URL fetch failure" in str(error):
      raise ValueError("--weights=imagenet could not be downloaded (no network?): use "
                       "--weights=none or a local weights file.") from None
    raise


def _fit(model, phase: _Phase, data: _Data, config, this: devices.Role, own_dir: str) -> dict:
  """Trains one phase, resuming from the run folder's backup; returns its clock.

  `own_dir` is where this process writes: the run folder for the chief, a
  scratch folder for the other workers (which restore from the chief's backup).
  The frozen phase of a transfer model trains its head on cached backbone
  features when `feature_cache.reason_not_cached` allows (same batches, same
  optimizer, same callbacks, on the same layer objects).

  Returns:
    {"seconds", "images", "steps", "cached_features"} of the phase: wall time
    and images trained, summed over the processes that ran it (a resumed run
    adds its time to the time saved at the last finished epoch).
  """
  backup_root = os.path.join(config.model_dir, "backup")
  done_path = os.path.join(backup_root, f"{phase.name}.done.weights.h5")
  clock_name = f"{phase.name}.clock.json"
  if os.path.exists(done_path):  # finished before a kill in a later phase
    model.load_weights(done_path)
    return callbacks_lib.PhaseClock.read(os.path.join(backup_root, clock_name))
  started = time.time()
  chief = this.is_chief
  reason = feature_cache.reason_not_cached(
      config, phase.name, images_trained=phase.epochs * data.steps * config.batch_size,
      train_images=data.counts["train"] // config.batch_size * config.batch_size)
  if reason and models.REGISTRY[config.model].backbone is not None:
    print(f"info: {phase.name} phase trains end to end, features not cached: {reason}.",
          flush=True)
  trainee, features = model, {}
  if reason is None:
    with data.strategy.scope():  # models remember the strategy they are made in
      extractor, trainee = models.split_at_pool(model)
    features = _extract_features(extractor, data, config, this,
                                 os.path.join(own_dir, feature_cache.FOLDER, phase.name))
  backup_dir = os.path.join(backup_root, phase.name + ("_cached" if features else ""))
  with data.strategy.scope():
    models.compile_for_training(trainee, phase.learning_rate)
  first_epoch = _restored_epoch(trainee, backup_dir, data.strategy)
  validation, validation_steps = data.validation(features.get("validation"))
  steps = callbacks_lib.StepCounter()
  clock = callbacks_lib.PhaseClock(os.path.join(own_dir, "backup", clock_name), started,
                                   restore_from=os.path.join(backup_root, clock_name),
                                   images_per_step=config.batch_size,
                                   cached_features=bool(features))
  callbacks = [steps, clock]
  if chief:
    callbacks += [
        callbacks_lib.Backup(backup_dir),
        callbacks_lib.HistoryCsv(os.path.join(own_dir, "history.csv"), phase.name,
                                 phase.epoch_offset),
        keras.callbacks.TensorBoard(os.path.join(own_dir, "logs", phase.name)),
    ]
  else:
    callbacks.append(callbacks_lib.RestoreOnly(backup_dir))
  if config.early_stopping_patience:
    state = f"{phase.name}.early_stopping.json"
    callbacks.append(callbacks_lib.ResumableEarlyStopping(
        os.path.join(own_dir, "backup", state), restore_from=os.path.join(backup_root, state),
        monitor="val_loss", patience=config.early_stopping_patience))
  if first_epoch < phase.epochs:
    trainee.fit(data.training(first_epoch, phase.epochs, features.get("train")),
                validation_data=validation, validation_steps=validation_steps,
                epochs=phase.epochs, steps_per_epoch=data.steps, shuffle=False,
                callbacks=callbacks, verbose=2 if os.environ.get("CI") or data.workers > 1
                else "auto")
  if chief:
    run_folder.replace_with(done_path, model.save_weights, suffix=".weights.h5",
                            expected_bytes=sum(weight.nbytes for weight in model.get_weights()))
  result = clock.finish(steps.count)
  if features:
    feature_cache.remove(os.path.join(own_dir, feature_cache.FOLDER, phase.name))
  return result


def _extract_features(extractor, data: _Data, config, this: devices.Role, folder: str) -> dict:
  """This worker's cached features of the train and validation splits.

  Single host: the extractor runs under the run's strategy (every replica) on
  whole splits. Multi-worker: each worker extracts its own share of each split
  (the records its training and validation streams read) with a local copy of
  the extractor, so no worker waits for another.
  """
  input_context = data.input_context()
  if input_context is not None:
    extractor = feature_cache.local_copy(extractor)
  started, images = time.time(), 0
  features = {}
  for split in ("train", "validation"):
    records = data.records(split, input_context, shard_files=split == "train")
    features[split] = feature_cache.extract(
        extractor, records, folder=folder, split=split,
        batch_size=data.worker_batch, image_size=config.image_size, resize=config.resize)
    images += len(features[split])
  seconds = time.time() - started
  print(f"{this.name if data.workers > 1 else 'train'}: backbone features of {images} "
        f"images ready in {seconds:.1f} s; the head trains on them.", flush=True)
  return features


def _restored_epoch(model, backup_dir: str, strategy) -> int:
  """The epoch to resume from: the one of the weights that are actually restored.

  The newest backup pair whose metadata matches its weights and whose weights
  load is put in place as latest.weights.h5 + training_metadata.json, so
  Keras's BackupAndRestore restores that same pair at the start of `fit`, and
  the data stream skips exactly its epochs. Weights without any metadata are
  from an epoch that never finished saving: they are set aside and the phase
  starts again. Metadata whose weights never load stops the run with one line.
  """
  weights = os.path.join(backup_dir, "latest.weights.h5")
  metadata = os.path.join(backup_dir, "training_metadata.json")
  pairs = list(callbacks_lib.restore_pairs(backup_dir))
  if not pairs:
    if any(os.path.exists(path) for path in (metadata, metadata + ".bkp")):
      raise ValueError(f"the backup in {backup_dir} cannot be read (no weights file matches "
                       f"its metadata): delete {backup_dir} to train this phase again from "
                       "its start.")
    if os.path.exists(weights):  # cut short before its metadata was written
      os.replace(weights, weights + ".unfinished")
      print(f"info: {weights} is from an epoch that never finished saving; set aside as "
            f"{weights}.unfinished, the phase starts again.", flush=True)
    return 0
  with strategy.scope():
    if model.optimizer is not None and not model.optimizer.built:
      model.optimizer.build(model.trainable_variables)  # its state is in the file too
  errors = []
  for pair_weights, pair_metadata, epoch in pairs:
    loadable = pair_weights
    if pair_weights != weights:  # Keras loads only names ending in .weights.h5
      loadable = os.path.join(backup_dir, "previous.weights.h5")
      run_folder.atomic_copy(pair_weights, loadable)
    try:
      model.load_weights(loadable)
    except Exception as error:  # pylint: disable=broad-except  (h5py, Keras: many types)
      errors.append(type(error).__name__)
      if loadable != weights:
        os.remove(loadable)
      continue
    if loadable != weights:  # the previous pair: Keras restores it from the usual names
      os.replace(loadable, weights)
      run_folder.atomic_copy(pair_metadata, metadata)
      print(f"info: {weights} cannot be used; resuming from the previous backup, after "
            f"epoch {epoch}.", flush=True)
    return epoch
  raise ValueError(f"the backup {weights} cannot be loaded ({', '.join(errors)}) and neither "
                   f"can its previous copy: delete {backup_dir} to train this phase again "
                   "from its start.")


def _evaluate(model, data: _Data, config, clocks: dict) -> dict:
  """Predicts the whole test split once and writes the run folder's results.

  The test batches are full and padded (see `input_pipeline.EvalPlan`), so any
  replica count evaluates every image exactly once; padded rows are dropped.
  Under multi-worker, the chief predicts with a local copy of the model (from
  the model.keras it saves), so no collective op waits for the other workers.
  """
  model_path = results.save_model(config.model_dir, model)
  if data.workers > 1:
    model = keras.models.load_model(model_path)
  test_records = data.records("test")
  labels, names = input_pipeline.labels_and_names(test_records)
  plan = input_pipeline.EvalPlan(len(labels), config.batch_size)
  batches = input_pipeline.eval_batches(test_records, plan, image_size=config.image_size,
                                        resize=config.resize)
  probabilities = model.predict(batches, verbose=0)
  if len(probabilities) != plan.steps * plan.batch_size:
    raise RuntimeError(f"{len(probabilities)} test predictions for {plan.steps} batches of "
                       f"{plan.batch_size}")
  probabilities = probabilities[:len(labels)]
  result = results.metrics(config.model_dir, labels, probabilities, data.class_names, clocks)
  selected = figures.select_errors(labels, probabilities)
  results.write(config.model_dir, result, names, labels, probabilities, data.class_names,
                _decoded(data, config, [names[index] for index in selected]),
                results.error_captions(selected, names, labels, probabilities,
                                       data.class_names))
  return result


def _decoded(data: _Data, config, names) -> list[np.ndarray]:
  """Test images by file name, decoded as the model saw them (for errors.png)."""
  if not names:
    return []
  records = input_pipeline.records(data.builder, "test", data.plan.filters, names)
  decoded = {}
  for name, image in records.map(lambda record: (
      record["file_name"], input_pipeline.decode_and_resize(
          record["image"], config.image_size, config.resize))):
    decoded[name.numpy().decode()] = image.numpy()
  return [decoded[name] for name in names]
