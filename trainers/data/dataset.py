"""Finding the built dataset, and naming the record file that a read error came from."""

import os
from typing import Optional

import tensorflow as tf
import tensorflow_datasets as tfds


class DatasetNotBuiltError(ValueError):
  """The TFDS dataset is missing from data_dir."""


class DamagedDataError(ValueError):
  """A record file of the built dataset is missing or corrupted."""


def builder(dataset: str, data_dir: Optional[str]) -> tfds.core.DatasetBuilder:
  """The prepared builder, or a DatasetNotBuiltError that gives the command."""
  import animals10_tfds  # pylint: disable=g-import-not-at-top,unused-import
  dataset_builder = tfds.builder(dataset, data_dir=data_dir)
  if not dataset_builder.is_prepared():
    raise DatasetNotBuiltError(
        f"{dataset} is not built in {dataset_builder.data_dir}: run "
        f"`{build_command(dataset_builder, data_dir)}` first (from another folder than the "
        "repository root, add --imports animals10_tfds).")
  return dataset_builder


def build_command(dataset_builder, data_dir: Optional[str], overwrite: bool = False) -> str:
  """The `tfds build` command that (re)builds this builder's config."""
  return (f"tfds build animals10_tfds --config={dataset_builder.builder_config.name} "
          f"--manual_dir=DOWNLOAD_DIR --data_dir={data_dir or '~/tensorflow_datasets'}"
          + (" --overwrite" if overwrite else ""))


def damaged(dataset_builder, error: Exception,
            data_dir: Optional[str]) -> Optional[DamagedDataError]:
  """After a read error: the one-line error naming the damaged record file, if any.

  TensorFlow's DataLossError ("corrupted record at 2604452") names no file, so
  every record file of the dataset is read through, CRCs checked, to find it.
  """
  if not isinstance(error, (tf.errors.DataLossError, tf.errors.NotFoundError,
                            tf.errors.OutOfRangeError, tf.errors.InvalidArgumentError)):
    return None
  for split in dataset_builder.info.splits.values():
    for path in split.filepaths:
      path = os.fspath(path)
      if not os.path.exists(path):
        reason = "missing"
      else:
        try:
          for _ in tf.data.TFRecordDataset(path):
            pass
          continue
        except tf.errors.OpError as read_error:
          reason = f"corrupted: {read_error.message.splitlines()[0]}"
      return DamagedDataError(
          f"the record file {path} is {reason}: rebuild the dataset with "
          f"`{build_command(dataset_builder, data_dir, overwrite=True)}`, then run the same "
          "command again; it resumes from the last finished epoch.")
  return None
