"""trainers.data.records: a split's records, filtered and sharded over workers."""

import pytest
import tensorflow as tf

from trainers.data import dataset as dataset_lib
from trainers.data import records as records_lib


@pytest.mark.parametrize("workers,expected", [(1, "none"), (2, "file"), (4, "file"),
                                              (3, "record"), (8, "record")])
def test_records_are_split_between_workers_without_overlap(data_dir, workers, expected):
  builder = dataset_lib.builder("animals10_tfds/160px", str(data_dir))
  assert builder.info.splits["train"].num_shards == 4
  assert records_lib.sharding(builder, "train", workers) == expected
  shares = []
  for index in range(workers):
    context = tf.distribute.InputContext(num_input_pipelines=workers, input_pipeline_id=index)
    shares.append(records_lib.labels_and_names(
        records_lib.records(builder, "train", input_context=context))[1])
  everything = records_lib.labels_and_names(records_lib.records(builder, "train"))[1]
  assert sorted(sum(shares, [])) == sorted(everything)  # all of it, each record once
  assert all(shares)
