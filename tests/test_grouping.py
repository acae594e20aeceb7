"""Exact duplicates, near-duplicate groups and stable splits."""

import io
import random

from PIL import Image

from animals10_tfds import grouping
from animals10_tfds import scan
from animals10_tfds import source
from tools import make_sample


def _scan(path, data):
  return scan.scan_bytes(source.Entry(path, source.FOLDERS.index(path.split("/")[0])), data)


def _sample(count, seed=3, folder="cane"):
  results = []
  for index in range(count):
    task = make_sample.ImageTask(folder, source.FOLDERS.index(folder), index, seed)
    path, data = make_sample.render(task)
    results.append(_scan(path, data))
  return results


def test_exact_duplicates_keep_the_first_path():
  results = _sample(3)
  copy = _scan("gatto/zz_copy.jpg", b"")
  copy.sha256 = results[1].sha256
  kept, duplicates = grouping.drop_exact_duplicates(results + [copy])
  assert len(kept) == 3
  assert duplicates == [{"path": "gatto/zz_copy.jpg", "duplicate_of": results[1].path}]


def test_resized_reencoded_copy_joins_its_original_group():
  original = _sample(1)[0]
  task = make_sample.ImageTask("cane", 0, 0, 3)
  image = Image.open(io.BytesIO(make_sample.render(task)[1]))
  buffer = io.BytesIO()
  image.resize((image.width * 2 // 3, image.height * 2 // 3)).save(buffer, "JPEG", quality=60)
  copy = _scan("cane/resized_copy.jpg", buffer.getvalue())
  others = _sample(40, seed=9)
  splits, groups = grouping.assign_splits([original, copy] + others)
  assert [sorted([original.path, copy.path])] == groups
  split_of = {result.path: name for name, items in splits.items() for result in items}
  assert split_of[original.path] == split_of[copy.path]


def test_grouping_matches_brute_force():
  rng = random.Random(0)
  hashes = [rng.getrandbits(64) for _ in range(150)]
  hashes += [value ^ (1 << rng.randrange(64)) ^ (1 << rng.randrange(64)) for value in hashes[:60]]
  roots = grouping.near_duplicate_groups(hashes)
  for first in range(len(hashes)):
    for second in range(first + 1, len(hashes)):
      if bin(hashes[first] ^ hashes[second]).count("1") <= grouping.HAMMING_THRESHOLD:
        assert roots[first] == roots[second]
  assert len(set(roots)) == 150


def test_splits_are_stable_when_building_twice_and_adding_images():
  base = _sample(60)
  first, _ = grouping.assign_splits(base)
  again, _ = grouping.assign_splits(list(reversed(base)))
  grown, _ = grouping.assign_splits(base + _sample(30, seed=11, folder="gatto"))

  def as_map(splits):
    return {result.path: name for name, items in splits.items() for result in items}

  assert as_map(first) == as_map(again)
  grown_map = as_map(grown)
  assert all(grown_map[path] == name for path, name in as_map(first).items())


def test_split_shares_are_seventy_ten_twenty():
  names = [grouping.split_of(f"{index:064x}") for index in range(20000)]
  assert abs(names.count("train") / 20000 - .7) < .015
  assert abs(names.count("validation") / 20000 - .1) < .01
  assert abs(names.count("test") / 20000 - .2) < .015
