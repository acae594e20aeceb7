"""Evaluation: what a finished run leaves behind, and how it is read back.

    metrics  the study's columns, per-class figures, the confusion matrix
    results  metrics.json, predictions.csv and figures written; `load` reads them back
    figures  every picture a run or a tool saves, through one `save`
    explain  Grad-CAM heat maps over images
"""

__all__ = ["explain", "figures", "metrics", "results"]
