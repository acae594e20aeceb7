"""Three fixes for Keras 3.15 behaviour this trainer cannot live with.

Two let `Model.fit` run under tf.distribute strategies, with TF 2.21 / Keras 3.15
(keras-team/keras#20585, tensorflow/tensorflow#72388):

1. `TensorFlowTrainer._maybe_symbolic_build`, at the start of fit, evaluate and
   predict under any strategy, takes a first batch and averages it across
   replicas with `strategy.reduce("MEAN", batch)`, only to read its shapes.
   That is an all-reduce of the images themselves: it fails whenever replicas
   hold batches of different sizes (MirroredStrategy: "Inputs to operation AddN
   ... must have the same size and shape", 17 vs 16 images of a 33-image batch
   on 2 replicas), and the collective strategy cannot reduce a nest at all
   ("Attempt to convert a value (PerReplica...)"). Fix: build from the first
   local replica's batch, which has the shapes the model needs.
   `fix_symbolic_build` applies it; the trainer calls it for every strategy.
2. Under MultiWorkerMirroredStrategy, `reduce_per_replica` averages the step's
   scalar logs across workers with `strategy.reduce("MEAN", v, axis=0)`: axis 0
   does not exist on a scalar. Fix: reduce across replicas only (axis=None), as
   single-host does. `fix_multi_worker_logs` applies it, for multi_worker only.

Both fail loudly if a Keras release moved the code; tests/test_train.py and
tests/test_multi_worker.py show when a new Keras no longer needs them.

3. A functional model passes its own `training` value to every layer it calls,
   overriding a `training=False` written at the call (`functional.operation_fn`
   injects the outer value into the node's kwargs). So a pretrained backbone
   called with `training=False`, as the Keras transfer-learning guide and the
   study do, runs in training mode during `fit`: EfficientNetV2B3's
   stochastic-depth Dropout layers drop whole residual branches.
   (BatchNormalization is spared only because a frozen BN layer always runs in
   inference mode.) `keep_inference_mode` makes one nested layer keep the
   `training` value of its own call; tests/test_models.py shows when a new
   Keras no longer needs it.
"""

import keras
import tensorflow as tf
# Keras's private modules are imported inside the fixes: a release that moves
# them fails there, with a line naming the fix, not at import.

_APPLIED = set()


def _trainer_module():
  # pylint: disable=g-import-not-at-top,protected-access
  from keras.src.backend.tensorflow import trainer as tf_trainer
  needed = ("_maybe_symbolic_build", "_collective_all_reduce_multi_worker",
            "reduce_per_replica")
  if (not hasattr(tf_trainer.TensorFlowTrainer, needed[0])
      or not all(hasattr(tf_trainer, name) for name in needed[1:])):
    raise RuntimeError(f"Keras {keras.__version__} moved the distributed-fit code that "
                       "trainers/modeling/keras_compat.py fixes: check keras-team/keras#20585 and "
                       "update or drop the fix.")
  return tf_trainer


def fix_symbolic_build():
  """Builds models from one replica's first batch, not a cross-replica mean (idempotent)."""
  if "symbolic_build" in _APPLIED:
    return
  from keras.src import tree  # pylint: disable=g-import-not-at-top
  tf_trainer = _trainer_module()
  symbolic_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build  # pylint: disable=protected-access

  def maybe_symbolic_build(self, iterator=None, data_batch=None):
    if iterator is not None and self._distribute_strategy is not None:  # pylint: disable=protected-access
      local = self.distribute_strategy.experimental_local_results
      for _, _, batches in iterator:
        data_batch = tree.map_structure(
            lambda value: local(value)[0] if isinstance(
                value, tf.distribute.DistributedValues) else value, next(batches))
        break
      iterator = None
    return symbolic_build(self, iterator=iterator, data_batch=data_batch)

  tf_trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build  # pylint: disable=protected-access
  _APPLIED.add("symbolic_build")


def fix_multi_worker_logs():
  """Averages scalar step logs across workers with axis=None (idempotent)."""
  if "multi_worker_logs" in _APPLIED:
    return
  from keras.src import tree  # pylint: disable=g-import-not-at-top
  tf_trainer = _trainer_module()
  reduce_per_replica = tf_trainer.reduce_per_replica

  def reduce_logs(values, strategy, reduction):
    if (reduction in ("auto", "mean")
        and tf_trainer._collective_all_reduce_multi_worker(strategy)):  # pylint: disable=protected-access
      return tree.map_structure(lambda value: strategy.reduce("MEAN", value, axis=None),
                                values)
    return reduce_per_replica(values, strategy, reduction)

  tf_trainer.reduce_per_replica = reduce_logs
  _APPLIED.add("multi_worker_logs")


def keep_inference_mode(layer: keras.layers.Layer):
  """Makes `layer` keep the `training=` of its call inside a functional model.

  It takes `training` out of the arguments the enclosing model propagates, so
  the value recorded when the model was built (False for backbones) stays. It
  changes no weights or config: a saved model is unchanged and loads anywhere.
  """
  if not isinstance(getattr(layer, "_call_context_args", None), set):
    raise RuntimeError(f"Keras {keras.__version__} changed how layers receive `training`: "
                       "update trainers/keras_compat.keep_inference_mode.")
  layer._call_context_args = layer._call_context_args - {"training"}  # pylint: disable=protected-access
