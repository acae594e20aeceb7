"""Animals-10 as a TFDS dataset: `import animals10_tfds` registers it.

A scan worker process (see `scan.py`) imports only the scanner: importing the
builder would import TensorFlow, about 4 s and hundreds of MB per worker.
"""

import os

if not os.environ.get("ANIMALS10_SCAN_WORKER"):
  from animals10_tfds.animals10_tfds_dataset_builder import Builder  # pylint: disable=g-import-not-at-top

  __all__ = ["Builder"]
