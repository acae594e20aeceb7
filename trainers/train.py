"""`train_and_evaluate(config)`: one run, from TFRecords to a finished run folder.

Precision is set once before anything is built; the model is built and compiled
in one place, inside `strategy.scope()`. A rerun of the same config resumes a
killed run from its last finished epoch (BackupAndRestore in the run folder).

Under --strategy=multi_worker every worker runs this same function: each reads
its own share of the records, only the chief writes the run folder (the others
restore from it and keep their own state in a scratch folder they delete), and
only the chief evaluates, once, over the whole test split.
"""

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from trainers import callbacks as callbacks_lib
from trainers import devices
from trainers import input_pipeline
from trainers import metrics as metrics_lib
from trainers import models

METRICS_FILE = "metrics.json"


@dataclasses.dataclass(frozen=True)
class _Phase:
  name: str
  epochs: int
  learning_rate: float
  epoch_offset: int


def train_and_evaluate(config) -> dict:
  """Trains, evaluates on the test split and writes the run folder.

  Args:
    config: a `trainers.config.Config`.

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
  strategy = devices.make_strategy(config.strategy, config.tpu, config.cluster_timeout)
  replicas = strategy.num_replicas_in_sync
  if config.batch_size % replicas:
    raise ValueError(f"--batch_size={config.batch_size} does not divide by the "
                     f"{replicas} replicas: use a multiple of {replicas}.")
  if this.is_chief:
    os.makedirs(config.model_dir, exist_ok=True)
  if os.path.exists(os.path.join(config.model_dir, METRICS_FILE)):
    with open(os.path.join(config.model_dir, METRICS_FILE)) as file:
      result = json.load(file)
    print(f"{config.model_dir} already holds a finished run (use a new --model_dir to "
          f"train again): {_summary_row(result)}")
    return result

  scratch = None if this.is_chief else tempfile.mkdtemp(prefix=f"animals10-worker{this.index}-")
  try:
    data = _Data(config, strategy, this)
    with strategy.scope():
      model = _build(config)
    phases = [_Phase("train", config.epochs, config.learning_rate, 0)]
    if config.fine_tune:
      phases.append(_Phase("fine_tune", config.fine_tune_epochs,
                           config.fine_tune_learning_rate, config.epochs))
    steps = 0
    for phase in phases:
      with strategy.scope():
        if phase.name == "fine_tune":
          models.unfreeze_top(model, config.fine_tune_layers)
        model.compile(optimizer=keras.optimizers.Adam(phase.learning_rate),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
      steps += _fit(model, phase, data, config, scratch or config.model_dir)
    result = _evaluate(model, data, config) if this.is_chief else None
    if this.num_workers > 1:
      print(f"{this.name} of {this.num_workers}: {steps} training steps of "
            f"{data.worker_batch} images from its {data.sharding} share of the train split",
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
          f"{time.time() - started:.0f} s): {_summary_row(result)} -> {config.model_dir}")
  return result


def _summary_row(result: dict) -> str:
  return " ".join(f"{key}={result[key]:.4f}" for key in metrics_lib.STUDY_COLUMNS
                  if result.get(key) is not None)


class _Data:
  """The run's splits: filtered, balanced records and their counts, and the
  batches this worker feeds its replicas."""

  def __init__(self, config, strategy, this):
    self.config, self.strategy = config, strategy
    self.workers = this.num_workers
    self.worker_batch = config.batch_size // this.num_workers
    self.builder = input_pipeline.builder(config.dataset, config.data_dir)
    self.class_names = self.builder.info.features["label"].names
    self.filters = input_pipeline.Filters(config.keep_formats, config.keep_modes,
                                          config.keep_orientations)
    self.keep, self.counts = {}, {}
    for split in ("train", "validation", "test"):
      labels, names = input_pipeline.labels_and_names(
          input_pipeline.records(self.builder, split, self.filters))
      if config.balance == "undersample":  # as the study did, for every split
        self.keep[split] = input_pipeline.undersample(labels, names, len(self.class_names))
        labels = labels[np.isin(names, self.keep[split])]
      if split == "train":
        self.train_labels = labels
      self.counts[split] = len(labels)
      if not len(labels):
        raise ValueError(f"No {split} images left after --keep_formats/--keep_modes/"
                         "--keep_orientations/--balance: loosen the filters.")
    self.class_weight = None
    if config.balance == "class_weight":
      weights = input_pipeline.class_weights(self.train_labels, len(self.class_names))
      self.class_weight = [weights[label] for label in range(len(self.class_names))]
    self.sharding = input_pipeline.sharding(self.builder, "train", self.workers)
    self.steps = len(self.train_labels) // config.batch_size
    if self.steps == 0:
      raise ValueError(f"--batch_size={config.batch_size} is larger than the "
                       f"{len(self.train_labels)} training images: lower it.")
    if config.steps_per_epoch:
      self.steps = min(self.steps, config.steps_per_epoch)

  def records(self, split, input_context=None, shard_files=True):
    return input_pipeline.records(self.builder, split, self.filters, self.keep.get(split),
                                  input_context, shard_files)

  def training(self, first_epoch: int, epochs: int):
    """The training stream from `first_epoch` on, distributed when multi-worker."""
    def batches(input_context=None):
      replica_batch = (input_context.get_per_replica_batch_size(self.config.batch_size)
                       if input_context else None)
      return input_pipeline.training_batches(
          self.records("train", input_context), batch_size=self.worker_batch,
          seed=self.config.seed, first_epoch=first_epoch, epochs=epochs,
          steps_per_epoch=self.steps, cache_decoded=self.config.cache,
          image_size=self.config.image_size, resize=self.config.resize,
          deterministic=self.config.deterministic, class_weight=self.class_weight,
          replica_batch_size=replica_batch,
          record_bytes=input_pipeline.mean_record_bytes(self.builder))
    if self.workers == 1:
      return batches()
    return self.strategy.distribute_datasets_from_function(batches)

  def validation(self):
    """(batches, steps): under multi-worker every worker takes every N-th record
    and the same number of steps, wrapping around (a worker may count up to
    one batch of records twice); steps is None for a single worker."""
    def batches(input_context=None):
      dataset = input_pipeline.eval_batches(
          self.records("validation", input_context, shard_files=False),
          batch_size=(input_context.get_per_replica_batch_size(self.config.batch_size)
                      if input_context else self.config.batch_size),
          image_size=self.config.image_size, resize=self.config.resize,
          cache_decoded=self.config.cache)
      return dataset.repeat() if input_context else dataset
    if self.workers == 1:
      return batches(), None
    steps = math.ceil(math.ceil(self.counts["validation"] / self.workers) / self.worker_batch)
    return self.strategy.distribute_datasets_from_function(batches), steps


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


def _fit(model, phase: _Phase, data: _Data, config, own_dir: str) -> int:
  """Trains one phase, resuming from the run folder's backup; returns the steps run.

  `own_dir` is where this process writes: the run folder for the chief, a
  scratch folder for the other workers (which restore from the chief's backup).
  """
  backup_root = os.path.join(config.model_dir, "backup")
  done_path = os.path.join(backup_root, f"{phase.name}.done.weights.h5")
  if os.path.exists(done_path):  # finished before a kill in a later phase
    model.load_weights(done_path)
    return 0
  chief = own_dir == config.model_dir
  backup_dir = os.path.join(backup_root, phase.name)
  first_epoch = _restored_epoch(backup_dir)
  validation, validation_steps = data.validation()
  steps = callbacks_lib.StepCounter()
  callbacks = [steps]
  if chief:
    callbacks += [
        keras.callbacks.BackupAndRestore(backup_dir, delete_checkpoint=False,
                                         double_checkpoint=True),
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
    model.fit(data.training(first_epoch, phase.epochs), validation_data=validation,
              validation_steps=validation_steps, epochs=phase.epochs,
              steps_per_epoch=data.steps, shuffle=False, callbacks=callbacks,
              verbose=2 if os.environ.get("CI") or data.workers > 1 else "auto")
  if chief:
    model.save_weights(done_path + ".tmp.weights.h5")
    os.replace(done_path + ".tmp.weights.h5", done_path)
  return steps.count


def _restored_epoch(backup_dir: str) -> int:
  path = os.path.join(backup_dir, "training_metadata.json")
  if not os.path.exists(path):
    return 0
  with open(path) as file:
    return int(json.load(file)["epoch"])


def _evaluate(model, data: _Data, config) -> dict:
  """Predicts the whole test split once and writes the run folder's results.

  Under multi-worker, the chief predicts with a local copy of the model (from
  the model.keras it saves), so no collective op waits for the other workers.
  """
  out_dir = config.model_dir
  temporary = os.path.join(out_dir, ".model.tmp.keras")
  model.save(temporary)
  if data.workers > 1:
    model = keras.models.load_model(temporary)
  test_records = data.records("test")
  labels, names = input_pipeline.labels_and_names(test_records)
  batches = input_pipeline.eval_batches(test_records, batch_size=config.batch_size,
                                        image_size=config.image_size, resize=config.resize)
  probabilities = model.predict(batches, verbose=0)
  predictions = probabilities.argmax(axis=1)
  result = {key: None for key in metrics_lib.STUDY_COLUMNS}
  history = callbacks_lib.read_history(os.path.join(out_dir, "history.csv"))
  if history:
    last = history[-1]
    for column, key in (("accuracy_train", "accuracy"), ("loss_train", "loss"),
                        ("val_accuracy_train", "val_accuracy"),
                        ("val_loss_train", "val_loss")):
      result[column] = float(last[key])
  result.update(metrics_lib.classification_metrics(labels, predictions, data.class_names))
  result["test_images"] = int(len(labels))
  metrics_lib.atomic_write(
      os.path.join(out_dir, "predictions.csv"),
      ("file_name,label,prediction\n" + "".join(
          f"{name},{data.class_names[label]},{data.class_names[prediction]}\n"
          for name, label, prediction in zip(names, labels, predictions))).encode())
  metrics_lib.confusion_png(os.path.join(out_dir, "confusion.png"),
                            result["confusion_matrix"], data.class_names)
  os.replace(temporary, os.path.join(out_dir, "model.keras"))
  metrics_lib.write_json(os.path.join(out_dir, METRICS_FILE), result)  # last: marks done
  return result
