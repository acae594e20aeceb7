"""tools.audit: folds that keep groups whole, leaks and outliers from features, its files,
and (slow, real photos and weights) the known answers: planted label errors and leaks."""

import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from conftest import needs_imagenet_weights
from conftest import needs_real_photos
from conftest import REAL
from conftest import REPO
from conftest import WEIGHTS_035
from tools import audit
from tools import audit_report


def _records(features, splits, labels):
  count = len(labels)
  return audit.Records(names=[f"c/{index}.jpg" for index in range(count)],
                       splits=np.asarray(splits), labels=np.asarray(labels),
                       phash=np.zeros(count, np.int64),
                       features=np.asarray(features, np.float32))


def test_folds_keep_each_near_duplicate_group_whole_and_are_balanced():
  groups = np.array([0, 0, 0, 1, 2, 3, 3, 4, 5, 6, 7, 8, 9, 9, 10])
  folds = audit.fold_of(groups, 3, seed=0)
  for group in np.unique(groups):
    assert len(set(folds[groups == group])) == 1
  sizes = np.bincount(folds, minlength=3)
  assert sizes.max() - sizes.min() <= 3  # the largest group
  assert list(audit.fold_of(groups, 3, seed=0)) == list(folds)
  assert list(audit.fold_of(groups, 3, seed=1)) != list(folds)


def test_leaks_are_similar_pairs_across_splits_only():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(6, 8))
  features[4] = features[0] * 2 + 0.01  # the same photo, in another split
  features[1] = features[2] + 0.001  # near-copies within one split: no leak
  records = _records(features, splits=[0, 0, 0, 1, 2, 2], labels=[0] * 6)
  pairs = audit.neighbours(records, 0.95)[0]
  assert [(later, earlier) for later, earlier, _ in pairs] == [(4, 0)]
  assert pairs[0][2] > 0.99


def test_outliers_are_far_for_their_class():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(2, 16)) * 5
  labels = np.repeat([0, 1], 20)
  features = centres[labels] + rng.normal(size=(40, 16)) * 0.3
  features[7] = rng.normal(size=16) * 5  # unlike anything
  records = _records(features, np.zeros(40, int), labels)
  found = audit.outliers_of(records, audit.neighbours(records, 1.1)[1], 3.5)
  assert found[0][0] == 7 and found[0][2] > 10 * max([z for _, _, z in found[1:]] + [1])
  assert [z for _, _, z in found] == sorted([z for _, _, z in found], reverse=True)


def test_phash_distance_counts_differing_bits():
  assert audit_report.phash_distance(0, 0) == 0
  assert audit_report.phash_distance(-1, 0) == 64  # int64 as stored: all bits set
  assert audit_report.phash_distance(0b1011, 0b0001) == 2


def test_random_weights_are_refused_unless_allowed(data_dir, tmp_path):
  with pytest.raises(ValueError, match="--weights=none gives mnv2_035 a random backbone.*"
                                       "--allow_random_features"):
    audit.audit(str(data_dir), "animals10_tfds/160px", "mnv2_035", "none", 32,
                str(tmp_path / "a"))
  with pytest.raises(ValueError, match="--outlier_z must be a number"):
    audit.audit(str(data_dir), "animals10_tfds/160px", "mnv2_035", "none", 32,
                str(tmp_path / "a"), outlier_z=float("nan"))
  with pytest.raises(ValueError, match="--model=cnn2 is not a transfer model"):
    audit.audit(str(data_dir), "animals10_tfds/160px", "cnn2", "none", 32, str(tmp_path))
  assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_an_audit_writes_its_table_report_and_sheets_identically_twice(data_dir, tmp_path):
  """With a random backbone (allowed for speed tests): the files, not the findings."""
  outs = [tmp_path / "first", tmp_path / "second"]
  for out in outs:
    summary = audit.audit(str(data_dir), "animals10_tfds/160px", "mnv2_035", "none", 32,
                          str(out), folds=3, allow_random_features=True)
  for name in ("audit.csv", "audit.md", "label_issues.png", "leaks.png", "outliers.png"):
    assert (outs[0] / name).exists(), name
  with open(outs[0] / "audit.csv", newline="") as file:
    rows = list(csv.DictReader(file))
  assert set(row["issue"] for row in rows) <= {"label", "near_duplicate", "outlier"}
  header = (outs[0] / "audit.csv").read_text().splitlines()[0].split(",")
  assert header[:7] == ["file_name", "split", "label", "suggested_label", "issue", "score",
                        "partner_file"]
  assert summary["records"] == len(_record_names(data_dir))
  assert (outs[0] / "audit.csv").read_bytes() == (outs[1] / "audit.csv").read_bytes()
  for issue in ("label", "near_duplicate", "outlier"):
    scores = [float(row["score"]) for row in rows if row["issue"] == issue]
    assert scores == sorted(scores, reverse=True)


def _record_names(data_dir) -> set:
  from trainers.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  from trainers.data import records as records_lib  # pylint: disable=g-import-not-at-top
  builder = dataset_lib.builder("animals10_tfds/160px", str(data_dir))
  return {name for split in ("train", "validation", "test")
          for name in records_lib.labels_and_names(records_lib.records(builder, split))[1]}


# --- Known answers on the real photos (slow). ------------------------------------------


def _plant_copy(original: str, split_of_original: str, folder: str):
  """A copy cropped by 15 %, mirrored and re-encoded, at the first JPEG quality that
  puts it into another split than the original's (its own group: pHash far apart)."""
  from animals10_tfds import grouping  # pylint: disable=g-import-not-at-top
  picture = Image.open(original).convert("RGB")
  width, height = picture.size
  cropped = picture.crop((int(width * 0.15), int(height * 0.15), width, height))
  mirrored = cropped.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  for quality in range(95, 50, -1):
    buffer = io.BytesIO()
    mirrored.save(buffer, "JPEG", quality=quality)
    data = buffer.getvalue()
    if grouping.split_of(hashlib.sha256(data).hexdigest()) != split_of_original:
      name = "copy_of_" + os.path.splitext(os.path.basename(original))[0] + ".jpg"
      with open(os.path.join(folder, name), "wb") as file:
        file.write(data)
      return name
  raise AssertionError(f"no JPEG quality moves a copy of {original} to another split")


@pytest.mark.slow
@needs_real_photos
@needs_imagenet_weights
def test_planted_label_errors_and_leaks_are_found(tmp_path):
  """5 % of the photos moved into a wrong class folder, and three cropped, mirrored,
  re-encoded copies planted in other splits."""
  from animals10_tfds import grouping  # pylint: disable=g-import-not-at-top
  from animals10_tfds import source  # pylint: disable=g-import-not-at-top
  manual = tmp_path / "photos"
  shutil.copytree(REAL, manual, ignore=shutil.ignore_patterns("*.md", "*.txt"))
  raw = manual / "raw-img"
  folders = sorted(path.name for path in raw.iterdir() if path.is_dir())
  files = sorted(f"{folder}/{name}" for folder in folders
                 for name in os.listdir(raw / folder))
  rng = np.random.default_rng(0)
  moved = {}
  for name in sorted(rng.choice(files, len(files) // 20, replace=False)):
    folder, base = name.split("/")
    target = folders[(folders.index(folder) + 1 + rng.integers(len(folders) - 1))
                     % len(folders)]
    os.rename(raw / name, raw / target / base)
    moved[f"{target}/{base}"] = folder
  planted = {}
  for name in [name for name in files if name not in moved and name.endswith(".jpg")][:3]:
    original = raw / name
    original_split = grouping.split_of(hashlib.sha256(original.read_bytes()).hexdigest())
    folder = name.split("/")[0]
    planted[f"{folder}/{_plant_copy(str(original), original_split, str(raw / folder))}"] = name
  data = tmp_path / "data"
  subprocess.run([os.path.join(os.path.dirname(sys.executable), "tfds"), "build",
                  "animals10_tfds", "--config=160px", f"--manual_dir={manual}",
                  f"--data_dir={data}"], cwd=REPO, check=True, capture_output=True)
  outs = [tmp_path / "audit1", tmp_path / "audit2"]
  for out in outs:
    audit.audit(str(data), "animals10_tfds/160px", "mnv2_035", WEIGHTS_035, 160, str(out),
                folds=5, seed=0)
  assert (outs[0] / "audit.csv").read_bytes() == (outs[1] / "audit.csv").read_bytes()
  with open(outs[0] / "audit.csv", newline="") as file:
    rows = list(csv.DictReader(file))
  flagged = [row["file_name"] for row in rows if row["issue"] == "label"]
  records = _record_names(data)
  moved = {name: folder for name, folder in moved.items() if name in records}  # not deduped
  top = flagged[:2 * len(moved)]
  found = [name for name in moved if name in top]
  precision = len(found) / max(1, len(top))
  recall = len(found) / len(moved)
  print(f"label errors: {len(moved)} moved, {len(flagged)} flagged; in the top "
        f"{len(top)}: {len(found)} (precision {precision:.2f}, recall {recall:.2f})")
  assert recall >= 0.8, (recall, sorted(set(moved) - set(found)))
  for row in rows:
    if row["file_name"] in moved and row["issue"] == "label":
      assert row["suggested_label"] in source.LABELS
  leaks = {(row["file_name"], row["partner_file"]): row for row in rows
           if row["issue"] == "near_duplicate"}
  for copy, original in planted.items():
    pair = leaks.get((copy, original)) or leaks.get((original, copy))
    assert pair is not None, (copy, original, sorted(leaks))
    assert int(pair["phash_distance"]) > 4, pair  # pHash misses it
    print(f"planted {copy} ~ {original}: cosine {pair['score']}, pHash distance "
          f"{pair['phash_distance']}, splits {pair['split']}/{pair['partner_split']}")


def _audit_folder(folder):
  from tools import audit_report  # pylint: disable=g-import-not-at-top
  folder.mkdir(exist_ok=True)
  (folder / "audit.csv").write_text("file_name,split\ncane/a.jpg,train\n")
  for name in ("label_issues.png", "leaks.png", "outliers.png"):
    (folder / name).write_bytes(b"png " + name.encode())
  audit_report.write_report(str(folder), "# Data audit\n")
  return audit_report


def test_a_rerun_replaces_only_the_audit_s_unchanged_output(tmp_path):
  audit_report = _audit_folder(tmp_path / "audit")
  audit_report.check_out(str(tmp_path / "audit"))  # unchanged: a rerun may replace it
  audit_report.check_out(str(tmp_path / "new"))  # absent: made
  edited = tmp_path / "audit" / "audit.csv"
  edited.write_text("file_name,split\n")  # the README's workflow: rows removed by hand
  with pytest.raises(ValueError, match="audit.csv is not the audit's unchanged output .* "
                                       "nothing was written"):
    audit_report.check_out(str(tmp_path / "audit"))
  assert edited.read_text() == "file_name,split\n"


def test_files_of_the_audit_s_names_that_are_not_its_own_are_kept(tmp_path):
  from tools import audit_report  # pylint: disable=g-import-not-at-top
  folder = tmp_path / "mine"
  folder.mkdir()
  (folder / "audit.md").write_text("# my notes\n")
  with pytest.raises(ValueError, match="audit.md is not an unedited report of an audit"):
    audit_report.check_out(str(folder))
  (folder / "audit.md").unlink()
  (folder / "audit.csv").write_text("my,table\n")
  with pytest.raises(ValueError, match="audit.csv is not the audit's unchanged output"):
    audit_report.check_out(str(folder))
  _audit_folder(tmp_path / "edited")
  report = tmp_path / "edited" / "audit.md"
  report.write_text(report.read_text().replace("# Data audit", "# My audit"))
  with pytest.raises(ValueError, match="audit.md is not an unedited report"):
    audit_report.check_out(str(tmp_path / "edited"))
  (tmp_path / "file").write_text("x")
  with pytest.raises(ValueError, match="--out=.*file is a file; .* give a folder"):
    audit_report.check_out(str(tmp_path / "file"))


@pytest.mark.parametrize("outlier_z", [0.0, -1.0])
def test_an_outlier_limit_at_or_below_zero_is_refused(data_dir, tmp_path, outlier_z):
  with pytest.raises(ValueError, match="--outlier_z must be a number above 0"):
    audit.audit(str(data_dir), "animals10_tfds/160px", "mnv2_035", "none", 32,
                str(tmp_path / "audit"), outlier_z=outlier_z, allow_random_features=True)
  assert not (tmp_path / "audit").exists()
