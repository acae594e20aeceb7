r"""What is wrong in the data: likely label errors, leaks across splits, outliers.

    python -m tools.audit --data_dir=D [--dataset=animals10_tfds/160px] --model=mnv2_035 \
        --weights=FILE [--image_size=160] [--folds=5] [--seed=0] --out=DIR

1. Features, once: the pooled backbone features of every record of every split,
   through the trainer's decode path and extractor (`trainers.training.feature_cache`,
   saved in DIR/features and checked like a run's cache; memory-mapped when large).
2. Out-of-sample probabilities for every record: k folds over all records, a
   near-duplicate group of the build never straddling two folds, a softmax head
   trained per fold on the features; seeded and deterministic.
3. Label issues by confident learning (`tools.confident_learning`).
4. Near-duplicates across splits: each record with a record of an earlier split
   (train < validation < test) whose features' cosine similarity is at least
   --similarity, paired with the most similar one: crops, mirror images,
   re-encodes and small edits that the build's pHash misses (each pair's pHash
   distance is reported too).
5. Outliers: records whose distance to their k-th nearest neighbour (cosine, over
   all records) has a robust z-score above --outlier_z: not an animal, a drawing,
   a figurine.

Writes DIR/audit.csv (file_name, split, label, suggested_label, issue, score,
partner_file, phash_distance; sorted by score within each issue), audit.md and
the contact sheets label_issues.png, leaks.png and outliers.png. Act on it with
`python -m trainers.main ... --exclude=DIR/audit.csv` (after removing the rows
you disagree with).
"""

import dataclasses
import hashlib
import json
import os
import sys
import time

# TensorFlow's C++ start-up chatter would bury a one-line error.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from trainers import config as config_lib  # pylint: disable=g-import-not-at-top

_FLAGS = flags.FLAGS
# Cosine similarity of pooled mnv2_035 features at or above which two records of
# different splits are reported as one photo. Calibrated on the real photos: distinct
# photos across splits reach 0.79, copies cropped by 15 %, mirrored and re-encoded
# 0.87-0.91, the build's own re-encoded near-duplicates 0.98 (README, audit section).
SIMILARITY = 0.83
NEIGHBOURS = 5
OUTLIER_Z = 3.5
# Each fold's head sees about this many examples, in 5 to 50 epochs: 50 epochs of the
# 390-odd training rows of the real photos; 5 of the 21,000 of the full-scale sample.
HEAD_EXAMPLES = 20_000


@dataclasses.dataclass
class Records:
  """Every record of every split, in split then record order."""

  names: list
  splits: np.ndarray  # index into split_plan.SPLITS
  labels: np.ndarray
  phash: np.ndarray
  features: np.ndarray


def audit(data_dir: str, dataset: str, model: str, weights: str, image_size: int, out: str,
          folds: int = 5, seed: int = 0, similarity: float = SIMILARITY,
          outlier_z: float = OUTLIER_Z, allow_random_features: bool = False,
          batch_size: int = 32) -> dict:
  """Runs the audit and writes its files into `out`; returns a summary.

  Raises:
    ValueError: one line, for bad arguments or weights that make the features
      meaningless.
  """
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from trainers import config as config_lib  # pylint: disable=g-import-not-at-top
  from trainers.modeling import models  # pylint: disable=g-import-not-at-top
  from trainers.modeling import cutting
  from trainers.training import train  # pylint: disable=g-import-not-at-top
  from trainers.modeling import weights as weights_lib  # pylint: disable=g-import-not-at-top
  from tools import audit_report  # pylint: disable=g-import-not-at-top
  from tools import confident_learning  # pylint: disable=g-import-not-at-top
  if model not in models.REGISTRY or models.REGISTRY[model].backbone is None:
    transfer = sorted(name for name, spec in models.REGISTRY.items() if spec.backbone)
    raise ValueError(f"--model={model} is not a transfer model of the registry; use one of "
                     f"{', '.join(transfer)}.")
  if folds < 2:
    raise ValueError(f"--folds must be at least 2, got {folds}.")
  if not 0 < similarity <= 1:
    raise ValueError(f"--similarity must be in (0, 1], got {similarity}.")
  if not np.isfinite(outlier_z) or outlier_z <= 0:
    raise ValueError(f"--outlier_z must be a number above 0, got {outlier_z}: an outlier is "
                     "that many robust standard deviations farther than its class's median.")
  audit_report.check_out(out)
  resolved = weights_lib.resolve(model, weights, image_size)
  if resolved is None and not allow_random_features:
    raise ValueError(f"--weights={weights} gives {model} a random backbone, whose features "
                     "mean nothing: pass pretrained weights (a file or imagenet), or "
                     "--allow_random_features for speed tests only.")
  started = time.time()
  tf.config.experimental.enable_op_determinism()
  # float32 on every machine: the audit's findings (which photos, which scores) must not
  # depend on what --precision=auto would pick where it runs.
  keras.mixed_precision.set_global_policy("float32")
  keras.utils.set_random_seed(seed)  # a random backbone (--allow_random_features) too
  config = config_lib.Config(model=model, model_dir=out, dataset=dataset, data_dir=data_dir,
                             image_size=image_size, weights=weights, seed=seed)
  extractor, _ = cutting.split_at_pool(train.build(config, resolved))
  builder, records = _features(extractor, config, resolved, out, batch_size)
  extracted = time.time() - started
  probabilities = out_of_sample(records, _groups(builder, records), folds, seed)
  found = confident_learning.find(records.labels, probabilities)
  pairs, distance = neighbours(records, similarity)
  outliers = outliers_of(records, distance, outlier_z)
  summary = audit_report.write(out, builder, config, records, found, pairs, outliers,
                               command=_command())
  summary.update(extraction_seconds=extracted, seconds=time.time() - started)
  return summary


def _command() -> str:
  """The command line as a user would type it again."""
  return " ".join(["python -m tools.audit"] + sys.argv[1:])


def _features(extractor, config, resolved, out: str, batch_size: int):
  """(builder, Records): every split's features, extracted once into out/features."""
  from trainers.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  from trainers.training import feature_cache  # pylint: disable=g-import-not-at-top
  from trainers.data import records as records_lib  # pylint: disable=g-import-not-at-top
  from trainers.evaluation import results  # pylint: disable=g-import-not-at-top
  from trainers.runs import run_folder  # pylint: disable=g-import-not-at-top
  builder = dataset_lib.builder(config.dataset, config.data_dir)
  weights_id = run_folder.sha256_of(resolved) if resolved not in (None, "imagenet") else str(
      resolved)
  settings = hashlib.sha256(json.dumps({
      "model": config.model, "weights": weights_id, "image_size": config.image_size,
      "resize": config.resize, "dataset": results.identity("", builder, [])[
          "dataset_fingerprint"]}, sort_keys=True).encode()).hexdigest()
  names, splits, labels, phashes, features = [], [], [], [], []
  from trainers.data import split_plan  # pylint: disable=g-import-not-at-top
  for index, split in enumerate(split_plan.SPLITS):
    split_records = records_lib.records(builder, split, extra_keys=("phash",))
    meta = [(record["file_name"].decode(), record["label"], record["phash"])
            for record in split_records.map(lambda r: {
                "file_name": r["file_name"], "label": r["label"], "phash": r["phash"]}
                                            ).as_numpy_iterator()]
    names += [name for name, _, _ in meta]
    labels.append(np.array([label for _, label, _ in meta], np.int64))
    phashes.append(np.array([value for _, _, value in meta], np.int64))
    splits.append(np.full(len(meta), index))
    features.append(feature_cache.extract(
        extractor, split_records, folder=os.path.join(out, "features"), split=split,
        batch_size=batch_size, image_size=config.image_size, resize=config.resize,
        settings_sha256=settings).features)
  stacked = _stack(features, os.path.join(out, "features", "all.features.npy"))
  return builder, Records(names, np.concatenate(splits), np.concatenate(labels),
                          np.concatenate(phashes), stacked)


def _stack(parts, path: str) -> np.ndarray:
  """The splits' features as one array: in memory when they fit, else memory-mapped."""
  from trainers.training import feature_cache  # pylint: disable=g-import-not-at-top
  total = sum(part.nbytes for part in parts)
  if total <= feature_cache.MEMORY_BYTES:
    return np.concatenate([np.asarray(part) for part in parts])
  stacked = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(
      sum(len(part) for part in parts), parts[0].shape[1]))
  start = 0
  for part in parts:
    stacked[start:start + len(part)] = part
    start += len(part)
  stacked.flush()
  return stacked


def _groups(builder, records: Records) -> np.ndarray:
  """A group id per record: the build's near-duplicate group, else its own."""
  members = builder.info.metadata.get("near_duplicate_group_members", []) or []
  of_name = {name: index for index, group in enumerate(members) for name in group}
  return np.array([of_name.get(name, len(members) + index)
                   for index, name in enumerate(records.names)])


def fold_of(groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
  """A fold per record: whole groups, in a seeded order, each to the smallest fold so far."""
  unique, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
  order = np.random.default_rng(seed).permutation(len(unique))
  fold_sizes = np.zeros(folds, np.int64)
  assigned = np.empty(len(unique), np.int64)
  for group in order:
    fold = int(np.argmin(fold_sizes))
    assigned[group] = fold
    fold_sizes[fold] += sizes[group]
  return assigned[inverse]


def out_of_sample(records: Records, groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
  """p(class | record) for every record from a softmax head that never saw it.

  The head is the trainer's kind (dropout, a ReLU layer, dropout, softmax) on
  features standardised with the training folds' statistics. On the real
  photos with 5 % of labels moved it put 21 of 24 moved records in the top 48
  label issues, a plain softmax regression 15-16 (out-of-sample accuracy 0.83
  against 0.81). Each fold trains 5 to 50 epochs (HEAD_EXAMPLES), in batches of
  32 or 1 % of its rows, whichever is larger.
  """
  import keras  # pylint: disable=g-import-not-at-top
  from animals10_tfds import source  # pylint: disable=g-import-not-at-top
  classes = len(source.LABELS)
  assignment = fold_of(groups, folds, seed)
  probabilities = np.zeros((len(records.labels), classes), np.float32)
  for fold in range(folds):
    held_out = assignment == fold
    train_rows, test_rows = np.flatnonzero(~held_out), np.flatnonzero(held_out)
    if not len(test_rows):  # pylint: disable=g-explicit-length-test
      continue
    features = np.asarray(records.features[train_rows], np.float32)
    mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-6
    keras.utils.set_random_seed(seed * 1000 + fold)
    head = keras.Sequential([
        keras.Input((features.shape[1],)), keras.layers.Dropout(0.2),
        keras.layers.Dense(256, activation="relu"), keras.layers.Dropout(0.5),
        keras.layers.Dense(classes, activation="softmax")])
    head.compile(optimizer=keras.optimizers.Adam(1e-3),
                 loss="sparse_categorical_crossentropy")
    batch_size = max(32, -(-len(train_rows) // 100))
    epochs = int(np.clip(round(HEAD_EXAMPLES / len(train_rows)), 5, 50))
    head.fit((features - mean) / scale, records.labels[train_rows], batch_size=batch_size,
             epochs=epochs, shuffle=True, verbose=0)
    held = (np.asarray(records.features[test_rows], np.float32) - mean) / scale
    probabilities[test_rows] = head.predict(held, batch_size=1024, verbose=0)
  return probabilities


def _normalised(features: np.ndarray, rows: slice) -> np.ndarray:
  block = np.asarray(features[rows], np.float32)
  return block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)


def _blocks(count: int, size: int = 2048):
  return [slice(start, min(start + size, count)) for start in range(0, count, size)]


def neighbours(records: Records, similarity: float):
  """One blocked pass over the cosine similarities of all pairs of records.

  Returns:
    (pairs, distance): for every record with a record of an earlier split at or
    above `similarity`, (record, its most similar such record, cosine), by
    descending cosine (ties: indices); and each record's cosine distance to its
    NEIGHBOURS-th nearest other record (NaN with fewer records than that).
  """
  count = len(records.labels)
  k = min(NEIGHBOURS, count - 1)
  distance = np.full(count, np.nan)
  partner, partner_cosine = np.full(count, -1), np.full(count, -np.inf)
  blocks = _blocks(count)
  normalised = {block.start: _normalised(records.features, block) for block in blocks}
  for first in blocks:
    nearest = []
    for second in blocks:
      sims = normalised[first.start] @ normalised[second.start].T
      # Records come in split order, so a later-split record's earlier-split partners
      # lie in blocks on or above the diagonal.
      if second.start >= first.start:
        earlier = records.splits[first][:, None] < records.splits[second][None, :]
        across = np.where(earlier, sims, -np.inf)
        best_row = across.argmax(axis=0)
        best = across[best_row, np.arange(across.shape[1])]
        better = best > partner_cosine[second]
        columns = np.flatnonzero(better) + second.start
        partner[columns] = best_row[better] + first.start
        partner_cosine[columns] = best[better]
      if first == second:
        np.fill_diagonal(sims, -np.inf)
      if k >= 1:
        kept = min(k, sims.shape[1])
        nearest.append(-np.partition(-sims, kept - 1, axis=1)[:, :kept])
    if k >= 1:
      ranked = np.sort(np.concatenate(nearest, axis=1), axis=1)[:, ::-1]
      distance[first] = 1 - ranked[:, k - 1]
  leaking = np.flatnonzero(partner_cosine >= similarity)
  pairs = [(int(index), int(partner[index]), float(partner_cosine[index])) for index in leaking]
  return sorted(pairs, key=lambda pair: (-pair[2], pair[0], pair[1])), distance


def outliers_of(records: Records, distance: np.ndarray,
                z_limit: float) -> list[tuple[int, float, float]]:
  """(record, k-th nearest neighbour distance, robust z) of every outlier, most first.

  The distance (from `neighbours`) is cosine (1 - similarity) to the
  NEIGHBOURS-th nearest other record of any class. Its robust z-score is taken
  within the record's given class, z = 0.6745 (d - median) / MAD (Iglewicz and
  Hoaglin's modified z-score): far for its class. A global z flags only the
  classes whose photos are all unlike each other (on the real photos, the
  butterflies); per class it flags an elephant herd on a far shore and a
  landscape with sheep in it.
  """
  z = np.zeros(len(distance))
  for label in np.unique(records.labels):
    members = (records.labels == label) & ~np.isnan(distance)
    if not members.any():
      continue
    median = np.median(distance[members])
    mad = np.median(np.abs(distance[members] - median))
    if mad > 0:
      z[members] = 0.6745 * (distance[members] - median) / mad
  flagged = np.flatnonzero(z > z_limit)
  return sorted(((int(index), float(distance[index]), float(z[index])) for index in flagged),
                key=lambda item: (-item[2], item[0]))


def main(argv):
  from trainers import cli  # pylint: disable=g-import-not-at-top
  from trainers.modeling import weights as weights_lib  # pylint: disable=g-import-not-at-top
  cli.no_arguments(argv)
  cli.quiet_logs()
  try:
    summary = audit(_FLAGS.data_dir, _FLAGS.dataset, _FLAGS.model, _FLAGS.weights,
                    _FLAGS.image_size, _FLAGS.out, folds=_FLAGS.folds, seed=_FLAGS.seed,
                    similarity=_FLAGS.similarity, outlier_z=_FLAGS.outlier_z,
                    allow_random_features=_FLAGS.allow_random_features)
  except (ValueError, weights_lib.WeightsError) as error:
    sys.exit(f"error: {error}")
  print(f"audit of {summary['records']} records in {summary['seconds']:.0f} s (extraction "
        f"{summary['extraction_seconds']:.0f} s): {summary['label']} label issues, "
        f"{summary['near_duplicate']} near-duplicate pairs across splits, "
        f"{summary['outlier']} outliers -> {_FLAGS.out}/audit.csv, audit.md")


def _define_flags():
  flags.DEFINE_string("data_dir", None, "Where `tfds build` wrote the dataset.")
  flags.DEFINE_string("dataset", config_lib.DATASET, "TFDS name/config.")
  flags.DEFINE_string("model", "mnv2_035", "A transfer model of the registry.")
  flags.DEFINE_string("weights", "imagenet", "The backbone's weights: a .h5 file, imagenet "
                      "(Keras's cache), or none (refused unless --allow_random_features).")
  flags.DEFINE_integer("image_size", 160, "Input side.")
  flags.DEFINE_integer("folds", 5, "Folds of the out-of-sample probabilities.")
  flags.DEFINE_integer("seed", 0, "Seed of the folds and the heads.")
  flags.DEFINE_float("similarity", SIMILARITY, "Cosine similarity of a near-duplicate pair.")
  flags.DEFINE_float("outlier_z", OUTLIER_Z, "Robust z-score of an outlier.")
  flags.DEFINE_bool("allow_random_features", False, "Audit with a random backbone (speed "
                    "tests only: its findings mean nothing).")
  flags.DEFINE_string("out", None, "Output folder.", required=True)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
