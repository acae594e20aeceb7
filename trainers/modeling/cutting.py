"""Cutting a transfer model in two, for the feature caches.

The frozen part runs once and its output is cached; the trainable part trains
on that cache. Both parts are made of the model's own layers, so training the
trainable part trains the model.
"""

import keras

from trainers.modeling import keras_compat
from trainers.modeling import models


class CutError(ValueError):
  """A transfer model's backbone cannot be cut where fine-tuning starts."""


def split_at_pool(model: keras.Model) -> tuple[keras.Model, keras.Model]:
  """(extractor, head) of a transfer model, made of the model's own layers.

  The extractor maps images to the pooled backbone features; the head maps
  those features to probabilities. Training the head trains the model: they
  share the layer objects, so `model` is whole afterwards.
  """
  pool = model.get_layer(models.POOL_LAYER)
  extractor = keras.Model(model.inputs, pool.output, name=f"{model.name}_extractor")
  features = keras.Input(pool.output.shape[1:], name="features")
  outputs = features
  for layer in model.layers[model.layers.index(pool) + 1:]:
    outputs = layer(outputs)
  return extractor, keras.Model(features, outputs, name=f"{model.name}_head")


def split_at_cut(model: keras.Model, layers: int) -> tuple[keras.Model, keras.Model]:
  """(bottom, top) of a transfer model at the start of its top `layers` backbone layers.

  The cut is found from the graph, for any backbone: the tensors that frozen
  layers (or the backbone's input) hand to the top `layers` layers, the ones
  `models.unfreeze_top` makes trainable. For MobileNetV2's top 30 it is one
  tensor (block_13_project); for EfficientNetV2B3 two, since the cut halves a
  residual block (its expansion and its skip). The bottom maps images to those
  tensors (a list when there are several); the top maps them to probabilities,
  through the rest of the backbone (in inference mode, as in the whole model)
  and the head.

  Raises:
    CutError: when no cut separates the two sides (a top layer also feeds a
      frozen one, or is called more than once), or the cut is the backbone's
      input (nothing frozen to cache); the message says which.
  """
  backbone = models.backbone_of(model)
  if backbone is None:
    raise CutError(f"{model.name} has no backbone")
  cut = _crossing_tensors(backbone, layers)
  inner_bottom = keras.Model(backbone.inputs, cut, name=f"{backbone.name}_bottom")
  inner_top = keras.Model(_one_or_list(cut), backbone.output, name=f"{backbone.name}_top")
  for part in (inner_bottom, inner_top):
    keras_compat.keep_inference_mode(part)  # as the whole backbone (see build_model)
  return _wrapped(model, backbone, inner_bottom, inner_top, cut)


def _crossing_tensors(backbone: keras.Model, layers: int) -> list:
  """The tensors frozen layers hand to the top `layers` layers of `backbone`."""
  inner = backbone.layers
  if layers <= 0:
    raise CutError(f"--fine_tune_layers={layers} unfreezes no layer of {backbone.name}")
  if layers >= len(inner):
    raise CutError(f"--fine_tune_layers={layers} leaves no frozen layer of {backbone.name}'s "
                   f"{len(inner)}")
  top_ids = {id(layer) for layer in inner[len(inner) - layers:]}
  for layer in inner:
    if len(layer._inbound_nodes) != 1:  # pylint: disable=protected-access
      raise CutError(f"layer {layer.name} is called {len(layer._inbound_nodes)} times")  # pylint: disable=protected-access
  cut = []
  for layer in inner:
    for tensor in layer._inbound_nodes[0].input_tensors:  # pylint: disable=protected-access
      producer = tensor._keras_history.operation  # pylint: disable=protected-access
      if id(layer) in top_ids and id(producer) not in top_ids:
        if not any(tensor is known for known in cut):
          cut.append(tensor)
      elif id(layer) not in top_ids and id(producer) in top_ids:
        raise CutError(f"top layer {producer.name} also feeds frozen layer {layer.name}")
  if any(isinstance(tensor._keras_history.operation, keras.layers.InputLayer)  # pylint: disable=protected-access
         for tensor in cut):
    raise CutError(f"the cut reaches {backbone.name}'s input: nothing frozen to cache")
  return cut


def _wrapped(model, backbone, inner_bottom, inner_top, cut) -> tuple[keras.Model, keras.Model]:
  """The whole model's preprocessing before the bottom, its pooling and head after the top."""
  position = model.layers.index(backbone)
  images = keras.Input(model.inputs[0].shape[1:], name="image")
  outputs = images
  for layer in model.layers[1:position]:  # preprocessing
    outputs = layer(outputs)
  bottom = keras.Model(images, inner_bottom(outputs, training=False),
                       name=f"{model.name}_bottom")
  activations = _one_or_list([keras.Input(tensor.shape[1:], name=f"cut_{index}")
                              for index, tensor in enumerate(cut)])
  outputs = inner_top(activations, training=False)
  for layer in model.layers[position + 1:]:  # pooling and head
    outputs = layer(outputs)
  return bottom, keras.Model(activations, outputs, name=f"{model.name}_top")


def _one_or_list(tensors: list):
  """Keras takes one tensor, or a list of several."""
  return tensors if len(tensors) > 1 else tensors[0]
