"""Two fixes that let Keras 3's `Model.fit` train under MultiWorkerMirroredStrategy.

With TF 2.21 / Keras 3.15, fit() under MultiWorkerMirroredStrategy fails twice
before the first step (keras-team/keras#20585, tensorflow/tensorflow#72388):

1. `TensorFlowTrainer._maybe_symbolic_build` takes a first batch and reduces
   the whole (x, y) tuple with `strategy.reduce`, only to read its shapes; the
   collective strategy cannot reduce a nest ("Attempt to convert a value
   (PerReplica...)"). Fix: take the first local replica's batch instead.
2. `reduce_per_replica` averages the step's scalar logs across workers with
   `strategy.reduce("MEAN", v, axis=0)`: axis 0 does not exist on a scalar.
   Fix: reduce across replicas only (axis=None), as single-host does.

Both are applied only for --strategy=multi_worker, and fail loudly if a Keras
release moved the code, so tests/test_multi_worker.py shows when to drop them.
"""

import keras
import tensorflow as tf

_APPLIED = []


def fix_fit_under_multi_worker():
  """Patches Keras's TensorFlow trainer (idempotent)."""
  if _APPLIED:
    return
  # pylint: disable=g-import-not-at-top,protected-access
  from keras.src import tree
  from keras.src.backend.tensorflow import trainer as tf_trainer
  needed = ("_maybe_symbolic_build", "_collective_all_reduce_multi_worker",
            "reduce_per_replica")
  if (not hasattr(tf_trainer.TensorFlowTrainer, needed[0])
      or not all(hasattr(tf_trainer, name) for name in needed[1:])):
    raise RuntimeError(f"Keras {keras.__version__} moved the multi-worker code that "
                       "trainers/keras_compat.py fixes: check keras-team/keras#20585 and "
                       "update or drop the fix.")
  symbolic_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
  reduce_per_replica = tf_trainer.reduce_per_replica

  def maybe_symbolic_build(self, iterator=None, data_batch=None):
    if iterator is not None and self._distribute_strategy is not None:
      local = self.distribute_strategy.experimental_local_results
      for _, _, batches in iterator:
        data_batch = tree.map_structure(
            lambda value: local(value)[0] if isinstance(
                value, tf.distribute.DistributedValues) else value, next(batches))
        break
      iterator = None
    return symbolic_build(self, iterator=iterator, data_batch=data_batch)

  def reduce_logs(values, strategy, reduction):
    if (reduction in ("auto", "mean")
        and tf_trainer._collective_all_reduce_multi_worker(strategy)):
      return tree.map_structure(lambda value: strategy.reduce("MEAN", value, axis=None),
                                values)
    return reduce_per_replica(values, strategy, reduction)

  tf_trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
  tf_trainer.reduce_per_replica = reduce_logs
  _APPLIED.append(True)
