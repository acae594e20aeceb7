"""Planning a run's data before any batch is made: balancing, counts, steps, padding.

Pure values from the records' labels and names (never an image): `plan` reads
every split once and returns a frozen `SplitPlan`; `EvalPlan` says how a split
is padded into full batches so every record counts exactly once.
"""

import dataclasses
import hashlib
import math
from typing import Optional, Sequence

import numpy as np

from trainers.data import records as records_lib


def _kept(labels: np.ndarray, names: list, listed: Optional[np.ndarray], balance: str,
          classes: int) -> tuple[np.ndarray, Optional[tuple], int]:
  """(labels kept, names kept or None for all, count excluded) of one split.

  `listed` marks the records --exclude names (None: the split keeps them).
  """
  keep, excluded = None, 0
  if listed is not None and listed.any():
    excluded = int(listed.sum())
    names = [name for name, hit in zip(names, listed) if not hit]
    labels = labels[~listed]
    keep = tuple(names)
  if balance == "undersample":
    keep = tuple(undersample(labels, names, classes))
    labels = labels[np.isin(names, keep)]
  return labels, keep, excluded


def _check_every_class(train_labels: np.ndarray, class_names: tuple, allow_empty_classes: bool):
  """Refuses a train split without some class, unless allowed."""
  counts = np.bincount(train_labels, minlength=len(class_names))
  empty = [name for name, count in zip(class_names, counts) if count == 0]
  if empty and not allow_empty_classes:
    raise ValueError(f"the train split has no {', '.join(empty)} image: rebuild the dataset "
                     "with every class, loosen --keep_formats/--keep_modes/--keep_orientations, "
                     "or pass --allow_empty_classes to train without them.")


def undersample(labels: np.ndarray, names: Sequence[str], num_classes: int) -> list[str]:
  """File names that keep every class at the smallest class's count.

  Which files are kept follows a hash of the file name, not the read order, so it
  is the same on every run and every worker.
  """
  counts = np.bincount(labels, minlength=num_classes)
  present = counts[counts > 0]
  smallest = int(present.min()) if present.size else 0
  kept = []
  for label in range(num_classes):
    members = [name for name, value in zip(names, labels) if value == label]
    members.sort(key=lambda name: hashlib.sha256(name.encode()).hexdigest())
    kept.extend(members[:smallest])
  return kept


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
  """Inverse-frequency weights (mean 1 over examples), as scikit-learn's 'balanced'."""
  counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
  weights = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
  return {label: float(weight) for label, weight in enumerate(weights)}


SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class SplitPlan:
  """What a run trains and evaluates on, decided once before any batch is made.

  `keep[split]` is the file names that balancing keeps (None: every record
  that passes the filters); `counts[split]` the records of each split after
  filters and balancing; `steps` the training steps per epoch.
  """

  class_names: tuple[str, ...]
  filters: records_lib.Filters
  keep: dict  # split -> tuple of file names, or None
  counts: dict  # split -> int
  excluded: dict  # split -> records left out as --exclude listed them
  class_weight: Optional[tuple[float, ...]]
  sharding: str  # of the train split over the workers: see `sharding`
  steps: int
  batch_size: int
  workers: int

  @property
  def worker_batch(self) -> int:
    return self.batch_size // self.workers

  def eval_plan(self, split: str) -> "EvalPlan":
    return EvalPlan(self.counts[split], self.batch_size, self.workers)


def filters_of(config) -> records_lib.Filters:
  """The metadata filters a run's `Config` asks for."""
  return records_lib.Filters(config.keep_formats, config.keep_modes, config.keep_orientations)


def plan_of_run(config, dataset_builder, workers: int = 1) -> "SplitPlan":
  """`plan` with a run's `Config` settings (filters, balance, batch, exclusions)."""
  return plan(dataset_builder, filters_of(config), config.balance, config.batch_size, workers,
              config.steps_per_epoch, allow_empty_classes=config.allow_empty_classes,
              exclude=config.exclude, exclude_test=config.exclude_test)


def plan(dataset_builder, filters: records_lib.Filters, balance: str, batch_size: int,
         workers: int = 1, steps_per_epoch: int = 0,
         allow_empty_classes: bool = False, exclude: Sequence[str] = (),
         exclude_test: bool = False) -> SplitPlan:
  """Reads every split's labels and names once and plans the run's data.

  Args:
    dataset_builder: from `builder`.
    filters: metadata filters.
    balance: "none", "undersample" (every split cut to its smallest class, as
      the study did) or "class_weight" (inverse-frequency loss weights).
    batch_size: global batch size.
    workers: input pipelines (multi-worker hosts).
    steps_per_epoch: cap on training steps per epoch; 0: one pass.
    allow_empty_classes: train although a class has no train image (else refused).
    exclude: file names to leave out of training and validation.
    exclude_test: leave them out of the test split too.

  Raises:
    ValueError: a split left empty, a class with no train image, a batch
      larger than the train split, or an excluded name that matches no record.
  """
  class_names = tuple(dataset_builder.info.features["label"].names)
  keep, counts, excluded, train_labels = {}, {}, {}, None
  unmatched = set(exclude)
  for split in SPLITS:
    labels, names = records_lib.labels_and_names(
        records_lib.records(dataset_builder, split, filters))
    listed = np.isin(names, list(exclude)) if exclude else np.zeros(len(names), bool)
    unmatched -= {name for name, hit in zip(names, listed) if hit}
    labels, keep[split], excluded[split] = _kept(
        labels, names, listed if split != "test" or exclude_test else None, balance,
        len(class_names))
    if not len(labels):  # pylint: disable=g-explicit-length-test
      raise ValueError(f"No {split} images left after --keep_formats/--keep_modes/"
                       "--keep_orientations/--balance/--exclude: loosen the filters.")
    counts[split] = len(labels)
    if split == "train":
      train_labels = labels
  if unmatched:
    raise ValueError(f"--exclude names {len(unmatched)} file(s) that match no record of the "
                     f"dataset (after --keep_* filters), e.g. {sorted(unmatched)[0]!r}: fix "
                     "the list (a typo?); nothing was trained.")
  _check_every_class(train_labels, class_names, allow_empty_classes)
  class_weight = None
  if balance == "class_weight":
    weights = class_weights(train_labels, len(class_names))
    class_weight = tuple(weights[label] for label in range(len(class_names)))
  steps = len(train_labels) // batch_size
  if steps == 0:
    raise ValueError(f"--batch_size={batch_size} is larger than the {len(train_labels)} "
                     "training images: lower it.")
  if steps_per_epoch:
    steps = min(steps, steps_per_epoch)
  return SplitPlan(class_names=class_names, filters=filters, keep=keep, counts=counts,
                   excluded=excluded, class_weight=class_weight,
                   sharding=records_lib.sharding(dataset_builder, "train", workers), steps=steps,
                   batch_size=batch_size, workers=workers)


@dataclasses.dataclass(frozen=True)
class EvalPlan:
  """Exact evaluation of a split with every batch full (big_vision's padding).

  Replicas split each batch evenly, so a last batch of 1 image on 2 replicas
  (one replica with no image) or of 33 (17/16) would crash a mirrored
  evaluation. So the records are followed by masked padding examples up to
  `steps` full batches. Records carry the sample weight `weight`, padding 0:
  Keras's weighted metrics then count each record once, and its loss tracker,
  which divides by every example of a batch, padding included, gets
  sum(loss) * weight / padded = sum(loss) / records: the exact mean.

  Attributes:
    count: records in the whole split (all workers).
    batch_size: global batch size.
    workers: input pipelines; each reads every `workers`-th record.
  """

  count: int
  batch_size: int
  workers: int = 1

  @property
  def worker_batch(self) -> int:
    return self.batch_size // self.workers

  @property
  def steps(self) -> int:
    """Batches every worker runs: enough for the largest share."""
    return max(1, math.ceil(math.ceil(self.count / self.workers) / self.worker_batch))

  @property
  def weight(self) -> float:
    """Sample weight of a record: padded examples over records, all workers."""
    return self.steps * self.batch_size / max(1, self.count)

  def share(self, worker: int) -> int:
    """Records of worker `worker` (`tf.data.Dataset.shard` takes every N-th)."""
    return len(range(worker, self.count, self.workers))
