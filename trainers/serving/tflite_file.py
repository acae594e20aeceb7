"""TFLite files: conversion with post-training quantization, inference and latency.

Conversion goes through `tf.lite.TFLiteConverter.from_keras_model` on the
float32 rebuild of the run's model (`export.float32_model`): in TF 2.21 it
traces the Keras 3 model's call into a concrete function, which is the route
that converts Keras 3 models (keras-team/keras#19108 broke the older one). The
SavedModel route gave NaNs on the same models.

Quantization (`QUANTIZE`):
  none     float32 weights and activations.
  dynamic  int8 weights, float activations (quantized on the fly).
  float16  float16 weights, float32 compute.
  int8     full-integer: int8 weights and activations, calibrated on
           representative images; `io="uint8"` takes uint8 RGB pixels in and
           gives float32 probabilities out, `io="float32"` takes and gives
           float32.
Tensor names are dropped from every file: they are debug strings (38 kB of an
810 kB int8 MobileNetV2 0.35), and nothing reads them; the signature stays.
"""

import contextlib
import io as io_lib
import os
import statistics
import time
import warnings

from ai_edge_litert import interpreter as litert
import numpy as np
import tensorflow as tf
from tensorflow.lite.python import convert as convert_lib
from tensorflow.lite.tools import flatbuffer_utils

QUANTIZE = ("none", "dynamic", "float16", "int8")
IO = ("float32", "uint8")
# Largest test-accuracy drop an export may have unless --max_accuracy_drop says otherwise.
MAX_ACCURACY_DROP = {"none": 0.01, "float16": 0.01, "dynamic": 0.02, "int8": 0.02}


def default_io(quantize: str) -> str:
  """uint8 pixels in for a full-integer model, float32 otherwise."""
  return "uint8" if quantize == "int8" else "float32"


def check_arguments(quantize: str, io: str):
  """Raises ValueError (one line) for a quantization and I/O pair that cannot be made."""
  if quantize not in QUANTIZE:
    raise ValueError(f"--quantize={quantize} is not one of {', '.join(QUANTIZE)}.")
  if io not in IO:
    raise ValueError(f"--io={io} is not one of {', '.join(IO)}.")
  if io == "uint8" and quantize != "int8":
    raise ValueError(f"--io=uint8 needs --quantize=int8 (only a full-integer model takes "
                     f"uint8 input); use --io=float32 with --quantize={quantize}.")


def convert(model, quantize: str = "none", io: str = "float32",
            calibration: np.ndarray = None) -> bytes:
  """The TFLite flatbuffer of a float32 Keras model.

  Args:
    model: a float32 Keras model taking float32 RGB in [0, 255].
    quantize: one of QUANTIZE.
    io: one of IO (uint8 only with int8).
    calibration: uint8 images [N, H, W, 3] at the model's size: the
      representative dataset of int8 (one image per calibration step).
  """
  check_arguments(quantize, io)
  converter = tf.lite.TFLiteConverter.from_keras_model(model)
  if quantize != "none":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if quantize == "float16":
    converter.target_spec.supported_types = [tf.float16]
  if quantize == "int8":
    if calibration is None or not len(calibration):  # pylint: disable=g-explicit-length-test
      raise ValueError("--quantize=int8 needs calibration images; give "
                       "--calibration_images=N with N >= 1.")
    converter.representative_dataset = lambda: (
        [image[np.newaxis].astype(np.float32)] for image in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8 if io == "uint8" else tf.float32
    converter.inference_output_type = tf.float32
  # Keras's export prints every captured variable on the way: kept off the output.
  with contextlib.redirect_stdout(io_lib.StringIO()), warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
      converted = converter.convert()
    except convert_lib.ConverterError as error:
      raise ValueError(f"the TFLite converter failed ({str(error).strip().splitlines()[0]}); "
                       "try another --quantize.") from None
  flatbuffer = flatbuffer_utils.convert_bytearray_to_object(converted)
  for subgraph in flatbuffer.subgraphs:
    for tensor in subgraph.tensors:
      tensor.name = None
  return bytes(flatbuffer_utils.convert_object_to_bytearray(flatbuffer))


class Runner:
  """A TFLite file run on uint8 RGB images, quantizing and dequantizing as it declares.

  It runs on LiteRT (`ai_edge_litert`), the runtime a device runs it on;
  `tf.lite.Interpreter` is deprecated in its favour.
  """

  def __init__(self, path: str, threads: int = None):
    try:
      self._interpreter = litert.Interpreter(model_path=path,
                                             num_threads=threads or os.cpu_count())
    except (ValueError, RuntimeError) as error:
      raise ValueError(f"{path} is not a TFLite model this TensorFlow can run "
                       f"({str(error).splitlines()[0]}).") from None
    self._input = self._interpreter.get_input_details()[0]
    self._output = self._interpreter.get_output_details()[0]
    self.image_size = int(self._input["shape"][1])
    self.input_type = np.dtype(self._input["dtype"]).name
    self._batch = None

  def probabilities(self, images: np.ndarray) -> np.ndarray:
    """float32 probabilities [N, classes] of uint8 images [N, size, size, 3]."""
    if self._batch != len(images):
      self._interpreter.resize_tensor_input(self._input["index"], images.shape)
      self._interpreter.allocate_tensors()
      self._batch = len(images)
    self._interpreter.set_tensor(self._input["index"], self._quantized(images))
    self._interpreter.invoke()
    return self._dequantized(self._interpreter.get_tensor(self._output["index"]))

  def _quantized(self, images):
    dtype = self._input["dtype"]
    if dtype == np.float32:
      return images.astype(np.float32)
    scale, zero_point = self._input["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(images.astype(np.float32) / scale + zero_point),
                   info.min, info.max).astype(dtype)

  def _dequantized(self, values):
    if values.dtype == np.float32:
      return values
    scale, zero_point = self._output["quantization"]
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


def median_ms(call, runs: int, warmup: int = 3) -> float:
  """Median wall time of `call()` over `runs` calls, in milliseconds, after warm-up calls."""
  for _ in range(warmup):
    call()
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    call()
    times.append((time.perf_counter() - start) * 1000)
  return statistics.median(times)


def latency_ms(path: str, image: np.ndarray, runs: int) -> dict:
  """{"1_thread", "all_threads"}: median ms per image of a TFLite file, batch 1."""
  timings = {}
  for name, threads in (("1_thread", 1), ("all_threads", os.cpu_count())):
    runner = Runner(path, threads)
    timings[name] = median_ms(lambda runner=runner: runner.probabilities(image[np.newaxis]),
                              runs)
  return timings
