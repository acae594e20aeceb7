"""Test metrics with the study's columns."""

from typing import Sequence

import numpy as np

# The study's table, in its order.
STUDY_COLUMNS = ("accuracy_train", "loss_train", "val_accuracy_train", "val_loss_train",
                 "accuracy_test", "precision_test", "recall_test", "f1-score_test")

def classification_metrics(labels: np.ndarray, predictions: np.ndarray,
                           class_names: Sequence[str]) -> dict:
  """Accuracy, support-weighted P/R/F1 (as scikit-learn's report), per class.

  Args:
    labels: true class indices.
    predictions: predicted class indices.
    class_names: names, by index.

  Returns:
    Dict with accuracy_test, precision_test, recall_test, f1-score_test,
    per_class ({name: precision, recall, f1-score, support}) and
    confusion_matrix (rows: true class, columns: predicted).
  """
  count = len(class_names)
  confusion = np.zeros((count, count), np.int64)
  np.add.at(confusion, (labels, predictions), 1)
  true_positive = np.diag(confusion).astype(np.float64)
  support = confusion.sum(axis=1).astype(np.float64)
  predicted = confusion.sum(axis=0).astype(np.float64)
  precision = np.divide(true_positive, predicted, out=np.zeros(count), where=predicted > 0)
  recall = np.divide(true_positive, support, out=np.zeros(count), where=support > 0)
  denominator = precision + recall
  f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(count),
                 where=denominator > 0)
  weights = support / max(support.sum(), 1)
  return {
      "accuracy_test": float(true_positive.sum() / max(len(labels), 1)),
      "precision_test": float(weights @ precision),
      "recall_test": float(weights @ recall),
      "f1-score_test": float(weights @ f1),
      "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                           "f1-score": float(f1[i]), "support": int(support[i])}
                    for i, name in enumerate(class_names)},
      "confusion_matrix": confusion.tolist(),
  }
