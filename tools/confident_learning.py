"""Confident learning: which given labels are likely wrong, and how noisy each class is.

Northcutt, Jiang & Chuang, "Confident Learning: Estimating Uncertainty in Dataset
Labels", JAIR 70 (2021), section 3, on out-of-sample predicted probabilities:

1. Per-class thresholds (eq. 2): t_j is the mean of p(j | x) over the records
   given label j (their mean self-confidence).
2. The confident joint C (eq. 1): a record given label i counts in C[i][j]
   when p(j | x) >= t_j; when several classes pass their threshold, the one of
   highest probability (ties: the lower index). A record passing none is not
   counted.
3. Calibration (eq. 3): each row of C is rescaled to the number of records
   given that label, and the whole to sum to 1: Q[i][j] estimates the joint
   p(given i, true j).
4. Noise rate of class i: p(true != i | given i) = 1 - Q[i][i] / sum_j Q[i][j].
5. Label issues by the paper's "prune by noise rate" (section 3.3; cleanlab's
   default too): for each off-diagonal cell (i, j), the round(n Q[i][j]) records
   given i with the largest margin p(j | x) - p(i | x) are flagged, suggested j
   and scored by that margin (a record picked by two cells keeps its larger
   margin). Unlike the records counted off the diagonal of C ("C_{y~,y*}"), this
   also finds a record whose true class is clear but below that class's
   threshold.

Pure NumPy; this is our own implementation (cleanlab is AGPL-3.0).
"""

import dataclasses

import numpy as np


@dataclasses.dataclass
class Result:
  """What confident learning found.

  Attributes:
    thresholds: [classes] per-class thresholds t_j (NaN for a class no record has).
    confident_joint: [classes, classes] counts C[given][true].
    joint: [classes, classes] calibrated joint Q (sums to 1).
    noise_rate: [classes] estimated p(true != i | given i) (NaN for an empty class).
    issues: indices of records flagged, by descending score (ties: index).
    suggested: [records] for a flagged record the class it is flagged as; else the
      class it is counted under in C (-1: none).
    score: [records] margin p(suggested) - p(given) (0 where not flagged).
  """

  thresholds: np.ndarray
  confident_joint: np.ndarray
  joint: np.ndarray
  noise_rate: np.ndarray
  issues: np.ndarray
  suggested: np.ndarray
  score: np.ndarray


def thresholds(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
  """t_j: the mean p(j | x) of the records given label j (NaN if there are none)."""
  classes = probabilities.shape[1]
  result = np.full(classes, np.nan)
  for j in range(classes):
    given = labels == j
    if given.any():
      result[j] = probabilities[given, j].mean()
  return result


def find(labels: np.ndarray, probabilities: np.ndarray) -> Result:
  """Confident learning on given `labels` [n] and out-of-sample `probabilities` [n, k]."""
  labels = np.asarray(labels, np.int64)
  probabilities = np.asarray(probabilities, np.float64)
  count, classes = probabilities.shape
  if labels.shape != (count,) or labels.min(initial=0) < 0 or labels.max(initial=0) >= classes:
    raise ValueError(f"labels must be {count} class indices below {classes}.")
  limits = thresholds(labels, probabilities)
  passing = probabilities >= np.where(np.isnan(limits), np.inf, limits)
  masked = np.where(passing, probabilities, -np.inf)
  suggested = np.where(passing.any(axis=1), masked.argmax(axis=1), -1)
  confident = np.zeros((classes, classes), np.int64)
  counted = suggested >= 0
  np.add.at(confident, (labels[counted], suggested[counted]), 1)
  given_counts = np.bincount(labels, minlength=classes).astype(np.float64)
  row_sums = confident.sum(axis=1, keepdims=True).astype(np.float64)
  calibrated = np.divide(confident * given_counts[:, None], row_sums,
                         out=np.zeros((classes, classes)), where=row_sums > 0)
  joint = calibrated / calibrated.sum() if calibrated.sum() else calibrated
  given_joint = joint.sum(axis=1)
  noise = np.full(classes, np.nan)
  has = given_joint > 0
  noise[has] = 1 - np.diag(joint)[has] / given_joint[has]
  score = np.zeros(count)
  picked = {}  # record -> (margin, class)
  for i in range(classes):
    given = np.flatnonzero(labels == i)
    for j in range(classes):
      take = int(np.round(count * joint[i, j])) if i != j else 0
      if not take or not len(given):  # pylint: disable=g-explicit-length-test
        continue
      margins = probabilities[given, j] - probabilities[given, i]
      for index in np.lexsort((given, -margins))[:take]:
        record, margin = int(given[index]), float(margins[index])
        if record not in picked or margin > picked[record][0]:
          picked[record] = (margin, j)
  rows = np.array(sorted(picked), np.int64)
  for record, (margin, j) in picked.items():
    score[record], suggested[record] = margin, j
  order = rows[np.lexsort((rows, -score[rows]))] if len(rows) else rows
  return Result(limits, confident, joint, noise, order, suggested, score)
