r"""Reruns the original study's experiments and prints its comparison table.

    python -m tools.reproduce --data_dir=work/tensorflow_datasets --out=work/runs \
        [--experiments=model_01,mnv2] [--seeds=0,1,2] [--quick] [--weights=none] \
        [--nocache_features] [-- TRAINER_FLAG ...]

One run folder per experiment and seed (OUT/<experiment>/seed_<n>), each a
`trainers.main` run from trainers/experiments/<experiment>.flags. Finished runs
are left as they are (the trainer says so, and refuses one of other settings)
and killed ones resume, so an interrupted reproduction continues.
`--quick` trains 2 epochs of 3 steps (and 1 fine-tuning epoch, no warm-up): a smoke run.

Trainer flags after `--` override the flagfiles' in every run, for data the
study's settings do not fit; e.g. on a set where some classes are all PNG:

    python -m tools.reproduce ... -- --keep_formats= --keep_modes= --balance=class_weight

Each run records them in its config.json (`overrides`) besides their effect.
At the end the comparison goes to OUT/comparison/ (`tools.compare`) and the whole
study to one page, OUT/report.html (`tools.report`).
Flags that name the run (--flagfile, --model_dir, --seed, --data_dir) are refused
after `--`, as is any flag the trainer does not take, before anything trains.
"""

import os
import subprocess
import sys
from typing import Optional

from absl import app
from absl import flags

from tools import compare
from tools import report
from trainers import cli
from trainers import experiments as experiments_lib
from trainers.runs import run_lock

EXPERIMENTS_DIR = experiments_lib.FOLDER
# What tools.report writes at the end of every study, in --out.
REPORT = "report.html"
QUICK = ("--epochs=2", "--steps_per_epoch=3", "--fine_tune_epochs=1",
         "--early_stopping_patience=0", "--warmup_epochs=0")  # no warm-up: 2 epochs are short

_FLAGS = flags.FLAGS
# Trainer flags that name a run, which reproduce sets itself: after `--` they would
# train another experiment, seed or folder under this one's name.
NAMES_THE_RUN = {
    "flagfile": "each run's flagfile is its experiment's (choose it with --experiments)",
    "model_dir": "each run's folder is OUT/<experiment>/seed_<n> (choose OUT with --out)",
    "seed": "each run's seed is one of --seeds",
    "data_dir": "give it to reproduce itself as --data_dir",
    "override": "reproduce records the overrides itself"}
# Parses flags as the trainer does, in a process of its own (the trainer's flags
# would clash with these), and prints the parser's one line if they do not parse.
_PARSE_AS_TRAINER = """
import sys
from absl import flags
from trainers import main
main.define_flags()
try:
  flags.FLAGS(["trainers.main", "--model=cnn2", *sys.argv[1:]])
except flags.Error as error:
  sys.exit(str(error))
"""


def available() -> list[str]:
  return sorted(name[:-len(".flags")] for name in os.listdir(EXPERIMENTS_DIR)
                if name.endswith(".flags"))


def command(experiment, seed, data_dir, run_dir, quick=False, weights=None,
            cache_features=True, overrides=()) -> list[str]:
  """The trainers.main command of one run; later flags override the flagfile's."""
  args = [sys.executable, "-m", "trainers.main",
          f"--flagfile={os.path.join(EXPERIMENTS_DIR, experiment + '.flags')}",
          f"--model_dir={run_dir}", f"--seed={seed}", "--deterministic"]
  if data_dir:
    args.append(f"--data_dir={data_dir}")
  if quick:
    args += list(QUICK)
  chosen = _weights_for(experiment, weights)
  if chosen and _sets_weights(experiment):  # the CNNs have no pretrained weights
    args.append(f"--weights={chosen}")
  if not cache_features:
    args.append("--nocache_features")
  args += list(overrides) + [f"--override={flag}" for flag in overrides]
  return args


def _weights_for(experiment: str, weights: Optional[str]) -> Optional[str]:
  """The --weights of one experiment: `weights`, or, for `MODEL=PATH,...`, the path given
  for the experiment's model (None when none is: its flagfile's stays)."""
  if not weights or "=" not in weights:
    return weights
  return weights_by_model(weights).get(experiments_lib.values(experiment).get("model"))


def weights_by_model(weights: str) -> dict:
  """{model: path} of a `--weights=MODEL=PATH,...` value.

  Raises:
    ValueError: a pair without a model or a path, or a model the registry lacks.
  """
  from trainers.modeling import models  # pylint: disable=g-import-not-at-top
  chosen = {}
  for pair in weights.split(","):
    model, _, path = pair.partition("=")
    if not model or not path:
      raise ValueError(f"--weights={weights}: write each pair as MODEL=FILE (got {pair!r}).")
    if model not in models.REGISTRY:
      raise ValueError(f"--weights={weights}: {model} is not a model of the registry; "
                       f"choose from {', '.join(models.REGISTRY)}.")
    chosen[model] = path
  return chosen


def _sets_weights(experiment: str) -> bool:
  """Whether an experiment's flagfile sets --weights (its transfer models do)."""
  return "weights" in experiments_lib.values(experiment)


def reproduce(experiments, seeds, data_dir, out, quick=False, weights=None,
              cache_features=True, overrides=()) -> list[str]:
  """Runs every experiment and seed (finished runs end at once); returns the run folders.

  Raises:
    ValueError: an unknown experiment, an override that is not a --flag, or a
      run that failed (rerunning the same command resumes it).
  """
  unknown = sorted(set(experiments) - set(available()))
  if unknown:
    raise ValueError(f"Unknown experiment(s) {', '.join(unknown)}: choose from "
                     f"{', '.join(available())}.")
  check_overrides(overrides)
  if weights and "=" in weights:
    weights_by_model(weights)  # a bad pair is one line before anything trains
  run_dirs = []
  for experiment in experiments:
    for seed in seeds:
      run_dir = os.path.join(out, experiment, f"seed_{seed}")
      run_dirs.append(run_dir)
      print(f"{experiment} seed {seed}: {run_dir}", flush=True)
      # A finished run ends at once, and one of other settings is refused by
      # the trainer itself (its settings hash is in metrics.json).
      result = subprocess.run(
          command(experiment, seed, data_dir, run_dir, quick, weights, cache_features,
                  overrides), check=False)
      if result.returncode:
        raise ValueError(f"{experiment} seed {seed} stopped (exit {result.returncode}) with "
                         "the trainer's line above; a killed or interrupted run resumes when "
                         "the same command is run again.")
  return run_dirs


def check_overrides(overrides):
  """Raises ValueError, before anything trains, for an override that is not a trainer
  flag, names the run (`NAMES_THE_RUN`), or does not parse as the trainer's flags."""
  for flag in overrides:
    if not flag.startswith("--"):
      raise ValueError(f"{flag!r} after -- is not a trainer flag: write it as --name=value.")
    name = flag[2:].split("=", 1)[0]
    name = name[2:] if name.startswith("no") and name[2:] in NAMES_THE_RUN else name
    if name in NAMES_THE_RUN:
      raise ValueError(f"{flag} after -- would name the run, not change how it trains "
                       f"({NAMES_THE_RUN[name]}): nothing was trained.")
  if not overrides:
    return
  parsed = subprocess.run([sys.executable, "-c", _PARSE_AS_TRAINER, *overrides],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  if parsed.returncode:
    lines = [line for line in parsed.stderr.splitlines() if line.strip()] or ["?"]
    raise ValueError(f"the flags after -- are not the trainer's ({lines[-1].strip()}): "
                     "nothing was trained; see python -m trainers.main --helpfull.")


def _define_flags():
  flags.DEFINE_list("experiments", [], "Experiments to run (default: all).")
  flags.DEFINE_list("seeds", ["0"], "Seeds, one run each.")
  flags.DEFINE_string("data_dir", None, "TFDS data_dir with animals10_tfds built.")
  flags.DEFINE_string("out", "runs", "Folder for the run folders.")
  flags.DEFINE_bool("quick", False, "Smoke run: 2 epochs of 3 steps.")
  flags.DEFINE_string("weights", None, "Override the backbones' weights: none, imagenet or "
                      "a file for every transfer experiment, or MODEL=FILE,... per model "
                      "(e.g. mnv2=A.h5,mnv2_035=B.h5).")
  flags.DEFINE_bool("cache_features", True, "Pass --nocache_features to every run when false "
                    "(to time the frozen phase without cached features).")
  # A path, as tools.compare takes it: the package's own folder is site-packages in a
  # plain install, never a results log.
  flags.DEFINE_string("append_workspace", None, "Append the table to this results log "
                      "(e.g. WORKSPACE.md).")


def main(argv):
  overrides = argv[1:]  # what followed `--`
  cli.quiet_logs()  # the report's TFDS lines ("Load dataset info ...") are not the user's
  try:
    seeds = [int(seed) for seed in _FLAGS.seeds]
    with run_lock.hold(_FLAGS.out, "tools.reproduce"):  # one reproduction per folder
      run_dirs = reproduce(_FLAGS.experiments or available(), seeds, _FLAGS.data_dir,
                           _FLAGS.out, _FLAGS.quick, _FLAGS.weights, _FLAGS.cache_features,
                           overrides)
    print(compare.compare(run_dirs, os.path.join(_FLAGS.out, compare.COMPARISON_DIR),
                          _FLAGS.append_workspace), end="")
    page = os.path.join(_FLAGS.out, REPORT)
    size = report.write(_FLAGS.out, page)
    print(f"report: {page} ({size / 1e6:.1f} MB)")
  except ValueError as error:
    sys.exit(f"reproduce: {error}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
