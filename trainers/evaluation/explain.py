"""Grad-CAM: where in an image the model looked for its top-1 class.

Selvaraju et al. (2017): the gradient of the class score with respect to the
last convolutional feature map, averaged over the map's positions, weights the
map's channels; their ReLU'd sum, upsampled to the image, is the heat map.
The feature map is the last `Conv2D`'s output for the study's CNNs and the
backbone's output (its last convolutional block, right before the pooling
layer) for the transfer models. Keras and `tf.GradientTape` only.
"""

import os
from typing import Sequence

import keras
import matplotlib
import numpy as np
import tensorflow as tf

from trainers.evaluation import figures
from trainers.runs import run_folder


def feature_map(model: keras.Model):
  """The symbolic tensor Grad-CAM differentiates against.

  Raises:
    ValueError: the model has neither a pooled backbone nor a Conv2D layer.
  """
  pools = [layer for layer in model.layers
           if isinstance(layer, keras.layers.GlobalAveragePooling2D)]
  if pools:  # transfer model: the backbone's output feeds the pooling layer
    return pools[-1].input
  convolutions = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
  if convolutions:
    return convolutions[-1].output
  raise ValueError(f"cannot explain model '{model.name}': it has no convolutional feature "
                   "map (no Conv2D layer and no pooled backbone).")


def grad_cam(model: keras.Model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Heat maps for the top-1 class of each image.

  Args:
    model: a registry model (raw RGB in [0, 255] to probabilities).
    images: [n, size, size, 3] float images in [0, 255].

  Returns:
    (heat maps [n, size, size] in [0, 1], top-1 class indices [n]).
  """
  output = model.layers[-1]
  if not isinstance(output, keras.layers.Dense):
    raise ValueError(f"cannot explain model '{model.name}': its last layer is not the Dense "
                     "output layer of the registry models.")
  # The class score is the logit, before the softmax: a confident probability
  # rounds to 1.0 and its gradient to exactly 0.
  probe = keras.Model(model.inputs, [feature_map(model), output.input])
  inputs = tf.convert_to_tensor(images, tf.float32)
  with tf.GradientTape() as tape:
    features, hidden = probe(inputs, training=False)
    logits = tf.matmul(tf.cast(hidden, tf.float32), tf.cast(output.kernel, tf.float32))
    logits += tf.cast(output.bias, tf.float32)
    top = tf.argmax(logits, axis=1)
    score = tf.gather(logits, top, batch_dims=1)
  gradients = tf.cast(tape.gradient(score, features), tf.float32)
  features = tf.cast(features, tf.float32)
  channel_weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
  cam = tf.nn.relu(tf.reduce_sum(channel_weights * features, axis=-1))
  cam = tf.image.resize(cam[..., None], images.shape[1:3], method="bilinear")[..., 0]
  peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
  cam = tf.math.divide_no_nan(cam, peak)
  return cam.numpy(), top.numpy()


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
  """The image with the heat map blended on top (jet colours), uint8 RGB."""
  colours = matplotlib.colormaps["jet"](heat)[..., :3] * 255
  return np.clip((1 - alpha) * image + alpha * colours, 0, 255).astype(np.uint8)


def write(out_dir: str, names: Sequence[str], images: np.ndarray, heat: np.ndarray,
          captions: Sequence[str]) -> list[str]:
  """Writes OUT/<name>.png per image (image beside its overlay); returns the paths."""
  pyplot = figures.pyplot()
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for name, image, cam, caption in zip(names, images, heat, captions):
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(5, 2.8))
    left.imshow(image.astype(np.uint8))
    right.imshow(overlay(image, cam))
    for axes in (left, right):
      axes.axis("off")
    figure.suptitle(caption, fontsize=8)
    figure.tight_layout()
    png = figures.png_bytes(figure)
    stem = os.path.splitext(os.path.basename(name))[0]
    path, copy = os.path.join(out_dir, stem + ".png"), 1
    while path in paths:  # same file name in two folders
      copy += 1
      path = os.path.join(out_dir, f"{stem}-{copy}.png")
    run_folder.atomic_write(path, png)
    paths.append(path)
  return paths
