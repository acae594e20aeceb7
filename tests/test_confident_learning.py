"""tools.confident_learning against a table worked out by hand, and the paper's definitions."""

import numpy as np
import pytest

from tools import confident_learning

# Three classes; record 2 is given class 0 but looks like class 1; record 4 passes no
# threshold. Worked out by hand below.
LABELS = np.array([0, 0, 0, 1, 1, 2])
PROBABILITIES = np.array([
    [0.9, 0.05, 0.05],
    [0.7, 0.2, 0.1],
    [0.1, 0.8, 0.1],
    [0.1, 0.8, 0.1],
    [0.2, 0.6, 0.2],
    [0.1, 0.1, 0.8],
])


def test_a_hand_worked_table():
  result = confident_learning.find(LABELS, PROBABILITIES)
  # t_j: mean self-confidence of the records given j.
  np.testing.assert_allclose(result.thresholds, [(0.9 + 0.7 + 0.1) / 3, 0.7, 0.8])
  # Record 4: 0.2 < t_0, 0.6 < t_1 = 0.7, 0.2 < t_2: counted nowhere.
  assert list(result.suggested) == [0, 0, 1, 1, -1, 2]
  np.testing.assert_array_equal(result.confident_joint, [[2, 1, 0], [0, 1, 0], [0, 0, 1]])
  # Rows rescaled to the given counts (3, 2, 1), then the whole to 1.
  np.testing.assert_allclose(result.joint, np.array([[2, 1, 0], [0, 2, 0], [0, 0, 1]]) / 6)
  np.testing.assert_allclose(result.noise_rate, [1 / 3, 0, 0])
  # Cell (0, 1) holds 6 x 1/6 = 1 record: of those given 0, the largest p(1) - p(0).
  assert list(result.issues) == [2]
  assert result.score[2] == pytest.approx(0.8 - 0.1)


def test_several_classes_past_their_thresholds_go_to_the_most_probable():
  labels = np.array([0, 0, 1, 1])
  probabilities = np.array([[0.6, 0.4], [0.2, 0.8], [0.3, 0.7], [0.5, 0.5]])
  # t = (0.4, 0.6): record 1 passes class 1 only (0.2 < 0.4), record 3 class 0 only
  # (0.5 >= 0.4, 0.5 < 0.6): C = [[1, 1], [1, 1]], Q = 1/4 everywhere, so each
  # off-diagonal cell flags 4 x 1/4 = 1 record, of the largest margin.
  result = confident_learning.find(labels, probabilities)
  np.testing.assert_array_equal(result.confident_joint, [[1, 1], [1, 1]])
  assert list(result.suggested) == [0, 1, 1, 0]
  assert list(result.issues) == [1, 3]  # margins 0.6 and 0.0


def test_the_paper_s_definitions_hold_on_random_noisy_labels():
  rng = np.random.default_rng(0)
  truth = rng.integers(0, 4, 400)
  logits = rng.normal(0, 1, (400, 4)) + 3 * np.eye(4)[truth]
  probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  labels = truth.copy()
  flipped = rng.choice(400, 40, replace=False)
  labels[flipped] = (labels[flipped] + 1) % 4
  result = confident_learning.find(labels, probabilities)
  assert result.joint.sum() == pytest.approx(1)
  # Calibrated rows are the given-label prior (eq. 3).
  np.testing.assert_allclose(result.joint.sum(1), np.bincount(labels, minlength=4) / 400)
  # Prune by noise rate: cell (i, j) flags round(n Q[i][j]) records given i (fewer
  # when a record is taken by two cells), those of the largest margin p(j) - p(i).
  for i in range(4):
    for j in range(4):
      in_cell = [index for index in result.issues
                 if labels[index] == i and result.suggested[index] == j]
      assert i != j or not in_cell
      if i != j:
        assert len(in_cell) <= round(400 * result.joint[i, j])
        for index in in_cell:
          assert result.score[index] == pytest.approx(
              probabilities[index, j] - probabilities[index, i])
  assert list(result.score[result.issues]) == sorted(result.score[result.issues], reverse=True)
  found = set(result.issues) & set(flipped)
  assert len(found) >= 0.8 * len(flipped)
  # The noise estimate is near the fraction of each given class that was flipped.
  actual = [np.isin(np.flatnonzero(labels == i), flipped).mean() for i in range(4)]
  assert np.all(np.abs(result.noise_rate - actual) < 0.1), (result.noise_rate, actual)


def test_an_empty_class_and_bad_labels():
  result = confident_learning.find(np.array([0, 0, 1]),
                                   np.array([[0.9, 0.1, 0], [0.8, 0.2, 0], [0.3, 0.7, 0]]))
  assert np.isnan(result.thresholds[2]) and np.isnan(result.noise_rate[2])
  assert list(result.suggested) == [0, -1, 1]  # 0.8 < t_0 = 0.85
  with pytest.raises(ValueError, match="labels must be 3 class indices below 3"):
    confident_learning.find(np.array([0, 3, 1]), np.full((3, 3), 1 / 3))
