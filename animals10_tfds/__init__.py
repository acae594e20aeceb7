"""Animals-10 as a TFDS dataset: `import animals10_tfds` registers it."""

from animals10_tfds.animals10_tfds_dataset_builder import Builder

__all__ = ["Builder"]
