"""The training recipe of one phase: optimizer, learning-rate schedule, loss, metric.

The study's recipe is Adam at a constant rate on sparse cross-entropy, and stays
the default. The modern one (after timm's `train.py` and Model
Garden) is made of Keras's own parts: AdamW's decoupled weight decay (none on
biases and normalization scales, as timm), `CosineDecay` with a linear warm-up,
label smoothing, soft labels for MixUp/CutMix, and the optimizer's exponential
moving average of the weights (`use_ema`).

The schedule spans one phase and is a function of the optimizer's step count,
which the run's backups hold: a resumed phase continues it exactly.
"""

import dataclasses

import keras

from trainers import config as config_lib


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How one phase trains.

  Attributes:
    learning_rate: the phase's rate (the peak, with a warm-up).
    steps: optimizer steps of the whole phase (the schedule's length).
    warmup_steps: of those, the linear warm-up from 0.
    schedule: "constant" or "cosine".
    optimizer: "adam" or "adamw".
    weight_decay: AdamW's decoupled weight decay.
    label_smoothing: of the cross-entropy.
    soft_labels: training labels may be class distributions (MixUp, CutMix).
    ema: keep the moving average of the weights; `fit` ends by writing it into them.
    ema_momentum: the average's momentum per step.
  """

  learning_rate: float
  steps: int = 0
  warmup_steps: int = 0
  schedule: str = "constant"
  optimizer: str = "adam"
  weight_decay: float = 0.0
  label_smoothing: float = 0.0
  soft_labels: bool = False
  ema: bool = False
  ema_momentum: float = 0.99


def of_phase(config: config_lib.Config, learning_rate: float, epochs: int,
             steps_per_epoch: int) -> Recipe:
  """The recipe of a phase of `epochs` epochs of `steps_per_epoch` steps."""
  return Recipe(learning_rate=learning_rate, steps=epochs * steps_per_epoch,
                warmup_steps=config.warmup_epochs * steps_per_epoch,
                schedule=config.schedule, optimizer=config.optimizer,
                weight_decay=config.weight_decay, label_smoothing=config.label_smoothing,
                soft_labels=bool(config.mixup or config.cutmix), ema=config.ema,
                ema_momentum=config.ema_momentum)


def learning_rate(recipe: Recipe):
  """The rate, or Keras's `CosineDecay` schedule: warm-up to the rate, then down to 0
  at the phase's last step."""
  if recipe.schedule == "constant":
    return recipe.learning_rate
  warmup = recipe.warmup_steps > 0
  return keras.optimizers.schedules.CosineDecay(
      initial_learning_rate=0.0 if warmup else recipe.learning_rate,
      decay_steps=max(1, recipe.steps - recipe.warmup_steps), alpha=0.0,
      warmup_target=recipe.learning_rate if warmup else None,
      warmup_steps=recipe.warmup_steps)


def ema_window(recipe: Recipe) -> float:
  """About how many steps the moving average spans, 1 / (1 - momentum); 0 without EMA."""
  return 1 / (1 - recipe.ema_momentum) if recipe.ema else 0.0


def optimizer(recipe: Recipe, model: keras.Model) -> keras.optimizers.Optimizer:
  """Adam or AdamW for `model`'s trainable variables, with EMA when asked."""
  ema = dict(use_ema=recipe.ema, ema_momentum=recipe.ema_momentum)
  if recipe.optimizer == "adam":
    return keras.optimizers.Adam(learning_rate(recipe), **ema)
  adamw = keras.optimizers.AdamW(learning_rate(recipe), weight_decay=recipe.weight_decay,
                                 **ema)
  # timm's rule: no decay on biases and normalization scales and offsets (1-D).
  adamw.exclude_from_weight_decay(
      var_list=[variable for variable in model.trainable_variables if len(variable.shape) <= 1])
  return adamw


@keras.saving.register_keras_serializable(package="animals10")
class SoftCrossentropy(keras.losses.Loss):
  """Cross-entropy with label smoothing, of class indices or class distributions.

  Training labels are distributions under MixUp/CutMix; validation labels stay
  indices. Both go through Keras's `categorical_crossentropy`.
  """

  def __init__(self, label_smoothing: float = 0.0, name: str = "soft_crossentropy", **kwargs):
    super().__init__(name=name, **kwargs)
    self.label_smoothing = label_smoothing

  def call(self, y_true, y_pred):
    if len(y_true.shape) < len(y_pred.shape):
      y_true = keras.ops.one_hot(keras.ops.cast(y_true, "int32"), y_pred.shape[-1])
    return keras.losses.categorical_crossentropy(
        keras.ops.cast(y_true, y_pred.dtype), y_pred, label_smoothing=self.label_smoothing)

  def get_config(self):
    return {**super().get_config(), "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="animals10")
class MaskedAccuracy(keras.metrics.SparseCategoricalAccuracy):
  """Accuracy over the examples whose sample weight is positive, each once.

  Evaluation pads its last batch with weight-0 examples (see
  `split_plan.EvalPlan`); class weights must not weight the accuracy. A label
  that is a class distribution (MixUp, CutMix) counts as its largest class.
  """

  def update_state(self, y_true, y_pred, sample_weight=None):
    if len(y_true.shape) == len(y_pred.shape):
      y_true = keras.ops.argmax(y_true, axis=-1)
    if sample_weight is not None:
      sample_weight = keras.ops.cast(keras.ops.greater(sample_weight, 0), self.dtype)
    return super().update_state(y_true, y_pred, sample_weight=sample_weight)


def compile_for_training(model: keras.Model, recipe: Recipe):
  """The recipe's optimizer and loss, and the padding-aware accuracy (logged as "accuracy").

  The study's recipe keeps Keras's sparse cross-entropy, so its runs are
  unchanged to the bit.
  """
  loss = "sparse_categorical_crossentropy"
  if recipe.label_smoothing or recipe.soft_labels:
    loss = SoftCrossentropy(recipe.label_smoothing)
  model.compile(optimizer=optimizer(recipe, model), loss=loss,
                weighted_metrics=[MaskedAccuracy(name="accuracy")])


def finalize(model: keras.Model):
  """Writes the optimizer's moving averages into the weights (with EMA), as `fit`
  does at its end: for a phase whose every epoch was restored from a backup."""
  inner = getattr(model.optimizer, "inner_optimizer", model.optimizer)  # under loss scaling
  if inner is not None and inner.use_ema:
    model.optimizer.finalize_variable_values(model.trainable_variables)


def compile_for_saving(model: keras.Model):
  """Built-in loss and metric only, so the saved model.keras loads without this package."""
  model.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy",
                metrics=["accuracy"])
  # Built now, so the file's optimizer matches the model and loads without a warning.
  model.optimizer.build(model.trainable_variables)
