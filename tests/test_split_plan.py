"""The split plan: balancing, class weights and counts, decided before any stream."""


import numpy as np
import pytest

from trainers.data import dataset as dataset_lib
from trainers.data import records as records_lib
from trainers.data import split_plan


@pytest.fixture(scope="module")
def builder(data_dir):
  return dataset_lib.builder("animals10_tfds/160px", str(data_dir))


def test_undersample_cuts_every_class_to_the_smallest(builder):
  labels, names = records_lib.labels_and_names(records_lib.records(builder, "train"))
  keep = split_plan.undersample(labels, names, 10)
  kept_labels, _ = records_lib.labels_and_names(
      records_lib.records(builder, "train", keep_names=keep))
  smallest = np.bincount(labels, minlength=10).min()
  assert np.bincount(kept_labels, minlength=10).tolist() == [smallest] * 10
  assert sorted(keep) == sorted(split_plan.undersample(labels[::-1], names[::-1], 10))


def test_plan_counts_balanced_splits_and_steps_once(builder):
  plan = split_plan.plan(builder, records_lib.Filters(), "undersample", batch_size=16,
                             workers=2, steps_per_epoch=0)
  for split in split_plan.SPLITS:
    labels, names = records_lib.labels_and_names(records_lib.records(builder, split))
    present = np.bincount(labels, minlength=10)
    present = present[present > 0]  # a small split may lack a class: it is not balanced in
    assert plan.counts[split] == len(present) * present.min() == len(plan.keep[split])
    assert set(plan.keep[split]) <= set(names)
  assert plan.steps == plan.counts["train"] // 16 and plan.worker_batch == 8
  assert plan.class_weight is None and plan.eval_plan("test").count == plan.counts["test"]
  weighted = split_plan.plan(builder, records_lib.Filters(), "class_weight",
                                 batch_size=16, steps_per_epoch=3)
  assert weighted.keep["train"] is None and weighted.steps == 3
  assert len(weighted.class_weight) == 10 and min(weighted.class_weight) > 0
  with pytest.raises(ValueError, match="--batch_size=100000 is larger"):
    split_plan.plan(builder, records_lib.Filters(), "none", batch_size=100_000)
  with pytest.raises(ValueError, match="No train images left"):
    split_plan.plan(builder, records_lib.Filters(formats=("TIFF",)), "none", 16)


def test_class_weights_are_inverse_frequency():
  weights = split_plan.class_weights(np.array([0, 0, 0, 1]), 2)
  assert weights == {0: 4 / 6, 1: 2.0}
