"""The batches one worker feeds its replicas, as the run's `SplitPlan` says.

`WorkerBatches` turns the plan into streams (`input_pipeline`) for the three
ways a run is fed: one host, several workers (each its own share, through
`distribute_datasets_from_function`), and cached backbone features in place of
decoded images. It makes no decision and reads no record until asked for one.
"""

from typing import Optional

import tensorflow as tf

from trainers import config as config_lib
from trainers.data import input_pipeline
from trainers.data import records as records_lib
from trainers.data import split_plan as split_plan_lib


class WorkerBatches:
  """The run's training and validation streams for this worker."""

  def __init__(self, config: config_lib.Config, strategy, dataset_builder,
               plan: split_plan_lib.SplitPlan):
    self.config, self.strategy = config, strategy
    self.builder, self.plan = dataset_builder, plan
    self.class_names = plan.class_names
    self.workers, self.worker_batch = plan.workers, plan.worker_batch
    self.counts, self.steps = plan.counts, plan.steps

  def records(self, split: str, input_context=None, shard_files: bool = True):
    """This worker's undecoded records of a split, filtered and balanced as planned."""
    return records_lib.records(self.builder, split, self.plan.filters, self.plan.keep[split],
                               input_context, shard_files)

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
          replica_batch_size=self._replica_batch(input_context),
          mixup=self.config.mixup, cutmix=self.config.cutmix,
          num_classes=len(self.class_names),
          record_bytes=records_lib.mean_record_bytes(self.builder),
          pass_records=self.counts["train"])
      if features is not None:
        return input_pipeline.feature_training_batches(features.indexed(), features.lookup,
                                                       stream)
      return input_pipeline.training_batches(self.records("train", input_context), stream)
    if self.workers == 1:
      return batches()
    return self.strategy.distribute_datasets_from_function(batches)

  def validation(self, features=None):
    """(batches, steps): full batches padded with weight-0 examples, so every
    record counts exactly once on every strategy (see `split_plan.EvalPlan`);
    under multi-worker each worker takes every N-th record and all run `steps`.
    With `features` (this worker's cached validation features), of those."""
    plan = self.plan.eval_plan("validation")

    def batches(input_context=None):
      if features is not None:
        return input_pipeline.feature_eval_batches(
            features.indexed(), features.lookup, plan,
            replica_batch_size=self._replica_batch(input_context))
      return input_pipeline.eval_batches(
          self.records("validation", input_context, shard_files=False), plan,
          image_size=self.config.image_size, resize=self.config.resize,
          cache_decoded=self.config.cache,
          replica_batch_size=self._replica_batch(input_context))
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

  def _replica_batch(self, input_context) -> Optional[int]:
    if input_context is None:
      return None
    return input_context.get_per_replica_batch_size(self.config.batch_size)
