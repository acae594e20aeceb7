"""What every command-line entry point does first, written once."""

from absl import app
from absl import flags
from absl import logging


def no_arguments(argv):
  """Raises absl's UsageError for positional arguments a command does not take."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")


def quiet_logs():
  """absl verbosity WARNING unless --verbosity was given.

  TensorFlow's and TFDS's INFO lines ("Load dataset info from ...", "Reduce to
  /job:localhost ...") are for their developers; --verbosity=0 shows them.
  """
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
