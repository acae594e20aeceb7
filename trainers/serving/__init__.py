"""Serving: a finished run as files other programs run, checked against the run.

    export       SavedModel and TFLite exports, measured on the test split
    predict      classifying image files with a run or a TFLite file
    tflite_file  converting, quantizing and running TFLite files (LiteRT)

Inside: export_report (the sealed report beside an export), keras_latency (the
per-image latency of a Keras model, in a process of its own).
"""

__all__ = ["export", "predict", "tflite_file"]
