"""animals10_tfds: Kaggle's Animals-10, deduplicated, with stable splits."""

import dataclasses
import os  # fspath only: TFDS's builder test forbids file functions of `os` here
import time
from typing import Optional

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from animals10_tfds import build_folder
from animals10_tfds import grouping
from animals10_tfds import image as image_lib
from animals10_tfds import scan as scan_lib
from animals10_tfds import source as source_lib
from animals10_tfds import spool as spool_lib

_DESCRIPTION = """
Animals-10 (Corrado Alessio, Kaggle): about 26k medium-quality photos of ten
animals taken from Google Images. Every record is an RGB JPEG with the original
file's hash, perceptual hash, size, mode, format and orientation. Identical files
are stored once; near-duplicate groups never straddle splits.
"""

_HOMEPAGE = source_lib.KAGGLE_URL

# Shorter side of the pre-resized configs: decoding a 160 px JPEG is 3-4x faster
# than a full-size one and 160 still covers the 100-150 px inputs of the study.
_RESIZED_SIDES = (160,)


@dataclasses.dataclass
class Animals10Config(tfds.core.BuilderConfig):
  """Stored resolution: `short_side` None keeps the original size."""

  short_side: Optional[int] = None


def _make_configs():
  configs = [Animals10Config(name="full", description="Original resolution.")]
  for side in _RESIZED_SIDES:
    configs.append(Animals10Config(
        name=f"{side}px", short_side=side,
        description=f"Shorter side downscaled to {side} px (never upscaled)."))
  return configs


class Builder(tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for Animals-10."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release: dedup, near-duplicate-aware splits."}
  BUILDER_CONFIGS = _make_configs()
  DEFAULT_CONFIG_NAME = "160px"
  # One line: TFDS prints it last, after its traceback, so its first words
  # say what to do.
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"{source_lib.PUT_THE_DOWNLOAD} in the manual dir and build again: "
      "tfds build animals10_tfds --manual_dir=DIR (default "
      "~/tensorflow_datasets/downloads/manual/; the download needs a free Kaggle login).")

  def _info(self) -> tfds.core.DatasetInfo:
    """Returns the dataset metadata."""
    return self.dataset_info_from_configs(
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3),
                                         encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(names=source_lib.LABELS),
            "file_name": tfds.features.Text(),
            "sha256": tfds.features.Text(),
            "phash": tfds.features.Scalar(
                dtype=np.int64, doc="64-bit pHash, bits as a signed int64"),
            "width": tfds.features.Scalar(dtype=np.int32),
            "height": tfds.features.Scalar(dtype=np.int32),
            "mode": tfds.features.Text(),
            "format": tfds.features.Text(),
            "orientation": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage=_HOMEPAGE,
        license="GPL-2.0",
        metadata=tfds.core.MetadataDict(),
    )

  def _download_and_prepare(self, dl_manager, download_config):  # pylint: disable=arguments-differ
    """Builds under a lock on the config's folder, clearing killed builds' leftovers."""
    with build_folder.lock(self.data_path.parent, self.builder_config.name):
      build_folder.remove_unfinished(self.data_path)
      return super()._download_and_prepare(dl_manager, download_config)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Scans, deduplicates and groups the images, then returns the splits."""
    source = source_lib.Source.find(dl_manager.manual_dir)
    entries, skipped = source.list()
    # In the build's own (incomplete) folder: on the disk meant for the data
    # set, not in a possibly small $TMPDIR.
    spool = spool_lib.Spool(os.fspath(self.data_path))
    good, locations = [], {}
    start = time.time()
    for result in scan_lib.scan(source, entries,
                                short_side=self.builder_config.short_side,
                                encode=True):
      if result.error:
        skipped.append({"path": result.path, "reason": result.error})
        continue
      locations[result.path] = spool.append(result.encoded)
      result.encoded = None
      good.append(result)
    seconds = time.time() - start
    kept, duplicates = grouping.drop_exact_duplicates(good)
    splits, groups = grouping.assign_splits(kept)
    empty = [name for name, results in splits.items() if not results]
    if empty:
      raise ValueError(
          f"Add images to {source.archive or source.root} and build again: its "
          f"{len(kept)} usable distinct image(s) leave the {', '.join(empty)} split(s) "
          f"empty ({len(skipped)} file(s) skipped, {len(duplicates)} duplicate(s)).")
    present = {result.label for result in kept}
    missing = [folder for label, folder in enumerate(source_lib.FOLDERS) if label not in present]
    if missing:
      lost = [item for item in skipped if item["path"].split("/")[0] in missing]
      reasons = sorted({item["reason"] for item in lost})
      raise ValueError(
          f"Add images to {', '.join(missing)} in {source.archive or source.root} and build "
          f"again: {'that class folder has' if len(missing) == 1 else 'those have'} no usable "
          f"image ({len(lost)} file(s) skipped{': ' + '; '.join(reasons) if reasons else ''}); "
          "a model trained without a class never predicts it.")
    self.info.metadata.update(_metadata(skipped, duplicates, groups, splits))
    logging.info(_summary(self.builder_config.name, len(entries), seconds,
                          self.info.metadata))
    spool.expect_readers(len(splits))
    return {name: self._generate_examples(results, spool, locations)
            for name, results in splits.items()}

  def _generate_examples(self, results, spool, locations):
    """Yields the records of one split, reading the spooled JPEG bytes."""
    try:
      for result in results:
        yield result.path, {
            "image": spool.read(locations[result.path]),
            "label": result.label,
            "file_name": result.path,
            "sha256": result.sha256,
            "phash": image_lib.phash_to_int64(result.phash),
            "width": result.width,
            "height": result.height,
            "mode": result.mode,
            "format": result.format,
            "orientation": result.orientation,
        }
    finally:
      spool.release()


def _metadata(skipped, duplicates, groups, splits):
  counts = {}
  for name, results in splits.items():
    per_class = dict.fromkeys(source_lib.LABELS, 0)
    for result in results:
      per_class[source_lib.LABELS[result.label]] += 1
    counts[name] = per_class
  return {
      "skipped": sorted(skipped, key=lambda item: item["path"]),
      "duplicates": duplicates,
      "near_duplicate_groups": len(groups),
      "near_duplicate_group_members": groups,
      "hamming_threshold": grouping.HAMMING_THRESHOLD,
      "split_counts": counts,
  }


def _summary(config, scanned, seconds, metadata):
  totals = {name: sum(counts.values())
            for name, counts in metadata["split_counts"].items()}
  reasons = {}
  for item in metadata["skipped"]:
    reasons[item["reason"]] = reasons.get(item["reason"], 0) + 1
  reason_text = "; ".join(f"{count} x {reason}" for reason, count in
                          sorted(reasons.items())) or "none"
  return (
      f"animals10_tfds/{config}: scanned {scanned} files in {seconds:.1f} s "
      f"({scanned / max(seconds, 1e-9):.0f} img/s); kept {sum(totals.values())}"
      f" (train {totals['train']}, validation {totals['validation']}, test "
      f"{totals['test']}); skipped {len(metadata['skipped'])} ({reason_text}); "
      f"{len(metadata['duplicates'])} exact duplicates dropped; "
      f"{metadata['near_duplicate_groups']} near-duplicate groups (Hamming <= "
      f"{metadata['hamming_threshold']}) kept within one split. Details in "
      "metadata.json.")
