"""A build's own folder: one build of a config at a time, and no leftovers of killed ones.

TFDS builds into `<data_dir>/animals10_tfds/<config>/incomplete.XXXXXX_<version>/`
and renames it when done; a build killed with -9 leaves that folder behind.
"""

import contextlib
import fcntl
import os

from absl import logging
import tensorflow_datasets as tfds


@contextlib.contextmanager
def lock(folder, config):
  """An exclusive lock on the config's folder for the build's lifetime.

  It is an flock on the folder itself, so the kernel drops it when a build is
  killed, and nothing is left on disk.
  """
  handle = os.open(os.fspath(folder), os.O_RDONLY)
  try:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise ValueError(f"Wait for the other build of animals10_tfds/{config} into "
                         f"{folder} to finish (or stop it), then build again.") from None
    yield
  finally:
    os.close(handle)


def remove_unfinished(building):
  """Removes the incomplete folders that killed builds of this version left."""
  prefix = tfds.core.constants.INCOMPLETE_PREFIX
  for folder in building.parent.iterdir():
    if (folder.name.startswith(prefix) and folder.name.endswith("_" + building.name.split("_")[-1])
        and folder.name != building.name and folder.is_dir()):
      logging.info("Removing %s, left by a build that did not finish.", folder)
      folder.rmtree()
