"""Our metrics agree with scikit-learn's classification report."""

import numpy as np
from sklearn import metrics as sk_metrics

from trainers.evaluation import metrics


def test_weighted_metrics_match_scikit_learn():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, 500)
  predictions = np.where(rng.random(500) < .6, labels, rng.integers(0, 10, 500))
  predictions[predictions == 3] = 4  # a class never predicted: zero precision
  names = [f"c{i}" for i in range(10)]
  ours = metrics.classification_metrics(labels, predictions, names)
  report = sk_metrics.classification_report(labels, predictions, output_dict=True,
                                            zero_division=0)
  assert np.isclose(ours["accuracy_test"], report["accuracy"])
  for ours_key, sk_key in (("precision_test", "precision"), ("recall_test", "recall"),
                           ("f1-score_test", "f1-score")):
    assert np.isclose(ours[ours_key], report["weighted avg"][sk_key])
  for index, name in enumerate(names):
    assert np.isclose(ours["per_class"][name]["f1-score"], report[str(index)]["f1-score"])
    assert ours["per_class"][name]["support"] == report[str(index)]["support"]
  assert ours["confusion_matrix"] == sk_metrics.confusion_matrix(labels, predictions).tolist()
