r"""A learning-rate range test on a run's own model and data (Smith 2017; fastai's lr_find).

    python -m tools.lr_find --flagfile=trainers/experiments/mnv2_035.flags \
        --data_dir=work/real_tfds --weights=FILE --out=work/lr_find [--sweep_steps=200]

Takes every flag of `trainers.main` (a run's flags.txt or an experiment's
flagfile, and overrides after it) and sweeps the first phase's learning rate
exponentially from --start_learning_rate to --end_learning_rate over
--sweep_steps steps of that phase's training stream, with its optimizer, loss,
augmentation and mixing (the head on cached features where the run would cache
them), one step per rate. It stops early once the loss diverges (past 4 times
its running minimum, smoothed as fastai does, or not finite).

Writes DIR/lr_find.png (loss against learning rate, log scale) and
DIR/lr_find.json, and prints the suggested rate as its last line. No run folder
is left behind: the model and any cached features live in a scratch folder
DIR/.lr_find-scratch-*, removed at the end, and by the next sweep into DIR when a
kill left one behind.

The rule (`suggest`): smooth the losses with a centred moving average (a
window of 5 % of the steps, at least 5, so the curve does not lag behind the
rate as an exponential average does), take the part before its minimum, and
suggest the rate where it falls fastest per decade of rate (the steepest
descent: Smith's and fastai's `steep`). On a synthetic problem the suggestion
lands within a factor of 3 of the best constant rate found by training at each
(tests/test_lr_find.py).
"""

import dataclasses
import math
import os
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
import keras  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from trainers import cli  # pylint: disable=g-import-not-at-top
from trainers.training import feature_cache  # pylint: disable=g-import-not-at-top
from trainers import main as trainer_main  # pylint: disable=g-import-not-at-top
from trainers.modeling import cutting  # pylint: disable=g-import-not-at-top
from trainers.training import recipe as recipe_lib  # pylint: disable=g-import-not-at-top
from trainers.evaluation import figures  # pylint: disable=g-import-not-at-top
from trainers.runs import run_folder  # pylint: disable=g-import-not-at-top
from trainers.training import train  # pylint: disable=g-import-not-at-top

SMOOTHING = 0.98  # of the running average that tells divergence (fastai's)
DIVERGED = 4.0  # stop once that average passes this many times its minimum
WINDOW = 0.05  # of the centred moving average the rule reads, as a share of the steps
# A fall of the smoothed loss up to this many times the losses' scatter around it
# is noise: a flat range, where any "steepest" rate would be chance.
FLAT = 2.0
SCRATCH_PREFIX = ".lr_find-scratch-"


def rates(start: float, end: float, steps: int) -> np.ndarray:
  """`steps` rates from `start` to `end`, evenly spaced on a log scale."""
  return np.geomspace(start, end, steps)


def smoothed(losses) -> np.ndarray:
  """Centred moving average of the losses (the ends padded with their values)."""
  losses = np.asarray(losses, np.float64)
  window = max(5, int(len(losses) * WINDOW)) // 2 * 2 + 1
  padded = np.pad(losses, window // 2, mode="edge")
  return np.convolve(padded, np.ones(window) / window, mode="valid")


def suggest(learning_rates, losses) -> float:
  """The rate where the smoothed loss falls fastest, before its minimum.

  Args:
    learning_rates: increasing rates, one per step.
    losses: the loss of each step (the sweep stops at the first non-finite one).

  Raises:
    ValueError: with one line, when the loss never falls.
  """
  losses = np.asarray(losses, np.float64)
  not_finite = np.flatnonzero(~np.isfinite(losses))
  finite = int(not_finite[0]) if len(not_finite) else len(losses)
  curve = smoothed(losses[:finite]) if finite else np.zeros(0)
  lowest = int(np.argmin(curve)) if finite else 0
  if lowest < 2:
    raise ValueError("the loss never fell in the sweep: lower --start_learning_rate (or "
                     "check the data).")
  # The scatter of the steps around the smoothed curve, up to its minimum (robust: the
  # median absolute residual, scaled to a standard deviation).
  residuals = losses[:lowest + 1] - curve[:lowest + 1]
  noise = 1.4826 * float(np.median(np.abs(residuals - np.median(residuals))))
  if curve[0] - curve[lowest] <= FLAT * noise:
    raise ValueError(f"no rate could be found: over this range the loss fell by "
                     f"{curve[0] - curve[lowest]:.3g}, within its step-to-step noise "
                     f"({noise:.3g}); widen the range (--start_learning_rate, "
                     "--end_learning_rate).")
  slope = np.gradient(curve[:lowest + 1], np.log10(np.asarray(learning_rates)[:lowest + 1]))
  return float(learning_rates[int(np.argmin(slope))])


class _Diverged(keras.callbacks.Callback):
  """Stops the sweep when the loss is not finite or far above its smoothed minimum."""

  def __init__(self):
    super().__init__()
    self.losses = []
    self.average, self.lowest = 0.0, math.inf  # fastai's bias-corrected running average

  def on_epoch_end(self, epoch, logs=None):
    loss = float((logs or {}).get("loss", math.nan))
    self.losses.append(loss)
    self.average = SMOOTHING * self.average + (1 - SMOOTHING) * loss
    smoothed_loss = self.average / (1 - SMOOTHING ** len(self.losses))
    self.lowest = min(self.lowest, smoothed_loss)
    if not math.isfinite(loss) or smoothed_loss > DIVERGED * self.lowest:
      self.model.stop_training = True


def sweep(model: keras.Model, stream, learning_rates) -> list[float]:
  """Trains `model` (compiled, its rate a variable) one step per rate on `stream`.

  Each step is one Keras epoch of one step, so its logged loss is that step's
  own; Keras's `LearningRateScheduler` sets the rate before it.

  Returns:
    The loss of each step taken (fewer than the rates if the loss diverged).
  """
  diverged = _Diverged()
  model.fit(stream, epochs=len(learning_rates), steps_per_epoch=1, verbose=0, shuffle=False,
            callbacks=[keras.callbacks.LearningRateScheduler(
                lambda epoch: float(learning_rates[epoch])), diverged])
  return diverged.losses


def check_out(out: str):
  """Raises ValueError unless `out` is a folder (or can become one)."""
  if os.path.lexists(out) and not os.path.isdir(out):
    raise ValueError(f"--out={out} is a file; the sweep writes a folder (lr_find.png, "
                     "lr_find.json): give a folder.")


def run(config, out: str, *, steps: int, start: float, end: float) -> dict:
  """The range test of `config`'s first phase; writes DIR/lr_find.{png,json}.

  Args:
    config: the run's `Config` (its model_dir is not used).
    out: the output folder.
    steps: rates to try, one training step each.
    start: the first rate.
    end: the last rate.

  Returns:
    The contents of lr_find.json.
  """
  check_out(out)
  scratch = run_folder.scratch_folder(out, SCRATCH_PREFIX)
  try:
    config = dataclasses.replace(config, model_dir=scratch)
    prepared = train.prepare(config)
    model, data = prepared.model, prepared.data
    trainee, features = model, None
    reason = feature_cache.reason_not_cached(
        config, images_trained=steps * config.batch_size,
        train_images=data.counts["train"] // config.batch_size * config.batch_size)
    if reason is None:
      extractor, trainee = cutting.split_at_pool(model)
      features = feature_cache.extract(
          extractor, data.records("train"), folder=os.path.join(scratch, "features"),
          split="train", batch_size=config.batch_size, image_size=config.image_size,
          resize=config.resize)
    recipe = dataclasses.replace(recipe_lib.of_phase(config, start, 1, 1), schedule="constant",
                                 warmup_steps=0, ema=False)
    recipe_lib.compile_for_training(trainee, recipe)
    learning_rates = rates(start, end, steps)
    stream = data.training(0, math.ceil(steps / data.steps), features)
    losses = sweep(trainee, stream, learning_rates)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  suggestion = suggest(learning_rates[:len(losses)], losses)
  result = {
      "model": config.model, "suggested_learning_rate": suggestion,
      "rule": "steepest descent of the loss (centred moving average) before its minimum",
      "learning_rate": config.learning_rate, "head_on_cached_features": features is not None,
      "start_learning_rate": start, "end_learning_rate": end, "steps": len(losses),
      "learning_rates": [float(rate) for rate in learning_rates[:len(losses)]],
      "losses": [float(loss) for loss in losses],
      "smoothed_losses": [float(loss) for loss in smoothed(losses)]}
  os.makedirs(out, exist_ok=True)
  run_folder.write_json(os.path.join(out, "lr_find.json"), result)
  _plot(result, os.path.join(out, "lr_find.png"))
  return result


def _plot(result: dict, path: str):
  """Loss and smoothed loss against the rate (log scale), the suggestion marked."""
  figure, axes = figures.pyplot().subplots(figsize=(7, 4.5))
  axes.plot(result["learning_rates"], result["losses"], color="0.75", label="loss of the step")
  axes.plot(result["learning_rates"], result["smoothed_losses"], label="smoothed")
  axes.axvline(result["suggested_learning_rate"], color="C3", linestyle="--",
               label=f"suggested {result['suggested_learning_rate']:.2g}")
  axes.axvline(result["learning_rate"], color="C2", linestyle=":",
               label=f"the run's --learning_rate {result['learning_rate']:.2g}")
  axes.set_xscale("log")
  axes.set_xlabel("learning rate")
  axes.set_ylabel("training loss")
  axes.set_title(f"{result['model']}: learning-rate range test ({result['steps']} steps)")
  top = np.nanpercentile(result["smoothed_losses"], 95) * 1.3
  axes.set_ylim(top=top if math.isfinite(top) else None)
  axes.legend()
  figure.tight_layout()
  figures.save(figure, path)


def main(argv):
  cli.no_arguments(argv)
  cli.quiet_logs()
  values = flags.FLAGS
  if values.sweep_steps < 2:
    sys.exit(f"error: --sweep_steps must be at least 2, got {values.sweep_steps}.")
  if not (0 < values.start_learning_rate < values.end_learning_rate
          and math.isfinite(values.end_learning_rate)):
    sys.exit("error: --start_learning_rate and --end_learning_rate must be positive finite "
             "numbers, the first below the second.")
  try:
    check_out(values.out)
  except ValueError as error:
    sys.exit(f"error: {error}")
  values.model_dir = values.model_dir or "unused"
  try:
    result = run(trainer_main.config_from_flags(), values.out, steps=values.sweep_steps,
                 start=values.start_learning_rate, end=values.end_learning_rate)
  except ValueError as error:
    sys.exit(f"error: {error}")
  print(f"{values.out}/lr_find.png and lr_find.json: {result['steps']} steps from "
        f"{values.start_learning_rate:g} to {result['learning_rates'][-1]:.3g}")
  print(f"suggested learning rate: {result['suggested_learning_rate']:.3g} "
        f"({result['rule']}; the run's --learning_rate is {result['learning_rate']:g})")


if __name__ == "__main__":
  trainer_main.define_flags()
  flags.DEFINE_string("out", None, "Folder for lr_find.png and lr_find.json.")
  flags.DEFINE_integer("sweep_steps", 200, "Rates to try, one training step each.")
  flags.DEFINE_float("start_learning_rate", 1e-7, "The first rate.")
  flags.DEFINE_float("end_learning_rate", 10.0, "The last rate.")
  flags.mark_flags_as_required(["out"])
  app.run(main)
