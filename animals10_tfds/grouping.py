"""Exact duplicates, near-duplicate groups and stable split assignment.

Splits are drawn from a hash of each near-duplicate group, never from file order
or a random draw: no group straddles two splits, building twice gives the same
splits, and adding unrelated images never moves an existing one. (A new image
that is a near-duplicate of existing ones joins their group and can move that
group only: keeping its copies in one split is the point of grouping.)
"""

import collections
import hashlib
from typing import Sequence

from animals10_tfds import scan as scan_lib

# pHash bits that may differ for two images to count as near-duplicates. A
# resized and re-encoded copy differs in 0-2 bits; distinct photos of the same
# animal rarely come within 10.
HAMMING_THRESHOLD = 4

SPLITS = (("train", 70), ("validation", 10), ("test", 20))
_SPLIT_SALT = b"animals10/split/v1/"


def drop_exact_duplicates(results: Sequence[scan_lib.ScanResult]):
  """Keeps the first file (in sorted path order) of each set of identical bytes.

  Args:
    results: good scan results, sorted by path.

  Returns:
    (kept, duplicates): kept results and `{path, duplicate_of}` records.
  """
  first_by_hash = {}
  kept, duplicates = [], []
  for result in sorted(results, key=lambda result: result.path):
    original = first_by_hash.setdefault(result.sha256, result.path)
    if original == result.path:
      kept.append(result)
    else:
      duplicates.append({"path": result.path, "duplicate_of": original})
  return kept, duplicates


def near_duplicate_groups(hashes: Sequence[int],
                          threshold: int = HAMMING_THRESHOLD) -> list[int]:
  """Groups hashes that are within `threshold` bits of each other (transitively).

  Two 64-bit hashes within `threshold` bits agree exactly on at least one of
  `threshold + 1` disjoint bit blocks (pigeonhole), so only hashes sharing a
  block are compared: near-linear instead of all pairs.

  Args:
    hashes: 64-bit perceptual hashes.
    threshold: largest Hamming distance inside a group.

  Returns:
    For each hash, the index of its group's first member.
  """
  parent = list(range(len(hashes)))

  def find(index):
    while parent[index] != index:
      parent[index] = parent[parent[index]]
      index = parent[index]
    return index

  blocks = threshold + 1
  edges = [round(64 * block / blocks) for block in range(blocks + 1)]
  for block in range(blocks):
    low, high = edges[block], edges[block + 1]
    mask = (1 << (high - low)) - 1
    buckets = collections.defaultdict(list)
    for index, value in enumerate(hashes):
      buckets[(value >> low) & mask].append(index)
    for members in buckets.values():
      for position, first in enumerate(members):
        for second in members[position + 1:]:
          if bin(hashes[first] ^ hashes[second]).count("1") <= threshold:
            root_first, root_second = find(first), find(second)
            if root_first != root_second:
              parent[max(root_first, root_second)] = min(root_first, root_second)
  return [find(index) for index in range(len(hashes))]


def split_of(group_key: str) -> str:
  """The split of a group, from a salted hash of its key; 70/10/20."""
  digest = hashlib.sha256(_SPLIT_SALT + group_key.encode()).digest()
  bucket = int.from_bytes(digest[:8], "big") % 100
  for name, share in SPLITS:
    if bucket < share:
      return name
    bucket -= share
  raise AssertionError("split shares must add up to 100")


def assign_splits(results: Sequence[scan_lib.ScanResult]):
  """Assigns each deduplicated result to a split by its near-duplicate group.

  A group's key is the smallest SHA-256 among its members, so it does not depend
  on file names or on the order files were found in.

  Args:
    results: deduplicated good scan results.

  Returns:
    (splits, groups): `{split: [results]}` and the near-duplicate groups of two
    or more files, as sorted lists of paths.
  """
  roots = near_duplicate_groups([result.phash for result in results])
  members = collections.defaultdict(list)
  for result, root in zip(results, roots):
    members[root].append(result)
  splits = {name: [] for name, _ in SPLITS}
  groups = []
  for group in members.values():
    split = split_of(min(result.sha256 for result in group))
    splits[split].extend(group)
    if len(group) > 1:
      groups.append(sorted(result.path for result in group))
  for split_results in splits.values():
    split_results.sort(key=lambda result: result.path)
  return splits, sorted(groups)
