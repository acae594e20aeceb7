"""The model registry: the study's CNNs and three transfer-learning heads.

Every model takes raw RGB in [0, 255]: its preprocessing (and, with `augment`,
its augmentation) are layers inside it, so a saved `model.keras` classifies
images as they come, augmentation runs on the accelerator, and no Lambda layer
stands in the way of safe-mode loading.
"""

import dataclasses
import functools
from typing import Callable, Optional, Sequence

import keras

from trainers.modeling import keras_compat

NUM_CLASSES = 10
# The layer between a transfer model's frozen part and its head: features are
# cached at its output (see `split_at_pool`).
POOL_LAYER = "pool"
# ImageNet statistics that DenseNet's "torch"-mode preprocess_input uses.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """How to make one model family."""

  backbone: Optional[Callable]  # keras.applications constructor, None for CNNs
  min_size: int
  preprocessing: Callable[[], list]  # layers mapping [0, 255] RGB to model input
  conv_filters: tuple[int, ...] = ()  # for the study's CNNs
  # The name Keras gives the ImageNet weights file (no top) at an input size, in
  # $KERAS_HOME/models (see `trainers.modeling.weights`); None for the CNNs.
  imagenet_file: Optional[Callable[[int], str]] = None
  # Layer types that stay frozen when the backbone's top is fine-tuned. BatchNorm
  # does, everywhere: its moving statistics stay in use (inference mode), and batch
  # statistics of small batches would wreck them. ConvNeXt has none: its
  # LayerNormalization keeps no statistics, normalizes each image alone, and
  # behaves the same in training and inference, so its scale and offset train
  # with the layers around them, as in ConvNeXt's own fine-tuning recipe.
  frozen_when_fine_tuning: tuple = (keras.layers.BatchNormalization,)


def _rescale_unit():
  return [keras.layers.Rescaling(1 / 255, name="rescale")]


def _rescale_symmetric():  # mobilenet_v2.preprocess_input: [-1, 1]
  return [keras.layers.Rescaling(1 / 127.5, offset=-1, name="rescale")]


def _imagenet_normalize():  # densenet.preprocess_input ("torch" mode)
  return [keras.layers.Rescaling(1 / 255, name="rescale"),
          keras.layers.Normalization(mean=_IMAGENET_MEAN,
                                     variance=[std ** 2 for std in _IMAGENET_STD],
                                     name="imagenet_normalize")]


def _mobilenet_v2_file(alpha: float) -> Callable[[int], str]:
  """Keras's file name: the width, and the input size when it is one it has weights for."""

  def name(image_size: int) -> str:
    rows = image_size if image_size in (96, 128, 160, 192, 224) else 224
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}_no_top.h5"
  return name


REGISTRY = {
    "cnn2": ModelSpec(None, 16, _rescale_unit, conv_filters=(32, 64)),
    "cnn4": ModelSpec(None, 48, _rescale_unit, conv_filters=(32, 64, 128, 256)),
    "mnv2": ModelSpec(keras.applications.MobileNetV2, 32, _rescale_symmetric,
                      imagenet_file=_mobilenet_v2_file(1.0)),
    # MobileNetV2 at width 0.35 (410k backbone parameters): the one whose ImageNet
    # weights this project's own tests can have (see README, "The study on real photos").
    "mnv2_035": ModelSpec(functools.partial(keras.applications.MobileNetV2, alpha=0.35), 32,
                          _rescale_symmetric, imagenet_file=_mobilenet_v2_file(0.35)),
    # EfficientNetV2 rescales inside the application (include_preprocessing).
    "enb3": ModelSpec(keras.applications.EfficientNetV2B3, 32, lambda: [],
                      imagenet_file=lambda _: "efficientnetv2-b3_notop.h5"),
    "dn121": ModelSpec(
        keras.applications.DenseNet121, 32, _imagenet_normalize,
        imagenet_file=lambda _: "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    # Beyond the study: the modern recipe's backbones. EfficientNetV2S and ConvNeXt-Tiny take [0, 255]
    # and normalize inside the application; ResNet50V2 wants [-1, 1]. Each
    # downsamples 32x, so 32 px leaves one position at the pooling layer.
    "enb2s": ModelSpec(keras.applications.EfficientNetV2S, 32, lambda: [],
                       imagenet_file=lambda _: "efficientnetv2-s_notop.h5"),
    "convnext_tiny": ModelSpec(keras.applications.ConvNeXtTiny, 32, lambda: [],
                               imagenet_file=lambda _: "convnext_tiny_notop.h5"),
    "resnet50v2": ModelSpec(
        keras.applications.ResNet50V2, 32, _rescale_symmetric,
        imagenet_file=lambda _: "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"),
}


# RandAugment's magnitude, in Keras's scale (see `augmentation`).
RANDAUGMENT_FACTOR = 0.5


def augmentation(seed: int, policy: str = "study") -> keras.Sequential:
  """The augmentation block of a policy; active only in training.

  study: flips, small rotations, zoom and contrast. randaugment: a horizontal
  flip, then Keras's RandAugment: 2 operations of 11 per batch at its default
  factor, 0.5 (rotations up to 180 degrees, shifts and shears up to half the
  image, posterization to 4 bits: stronger than timm's rand-m9-n2).
  """
  if policy == "randaugment":
    layers = [keras.layers.RandomFlip("horizontal", seed=seed),
              keras.layers.RandAugment(value_range=(0, 255), num_ops=2,
                                       factor=RANDAUGMENT_FACTOR, seed=seed + 1)]
  elif policy == "study":
    layers = [keras.layers.RandomFlip("horizontal", seed=seed),
              keras.layers.RandomRotation(0.05, seed=seed + 1),
              keras.layers.RandomZoom(0.1, seed=seed + 2),
              keras.layers.RandomContrast(0.1, seed=seed + 3)]
  else:
    raise ValueError(f"--augment={policy} is not one of study, randaugment.")
  return keras.Sequential(layers, name="augmentation")


def build_model(name: str, image_size: int, *, head_units: Sequence[int] = (128,),
                augment: str = "none", weights: Optional[str] = None,
                seed: int = 0) -> keras.Model:
  """Builds a registry model (uncompiled).

  Args:
    name: a key of `REGISTRY`.
    image_size: input height and width.
    head_units: sizes of the Dense layers before the output.
    augment: the augmentation policy in front ("none", "study", "randaugment").
    weights: backbone weights: "imagenet", None, or a weights file; for the CNNs
      a file of the whole model's weights.
    seed: seed of the augmentation layers.

  Returns:
    A `keras.Model` from uint8-range RGB to class probabilities.
  """
  if name not in REGISTRY:
    raise ValueError(f"Unknown model '{name}': choose one of {', '.join(REGISTRY)}.")
  spec = REGISTRY[name]
  if image_size < spec.min_size:
    raise ValueError(f"--image_size={image_size} is below {name}'s minimum of "
                     f"{spec.min_size} px.")
  inputs = keras.Input((image_size, image_size, 3), name="image")
  features = augmentation(seed, augment)(inputs) if augment != "none" else inputs
  for layer in spec.preprocessing():
    features = layer(features)
  if spec.backbone is None:
    for filters in spec.conv_filters:
      features = keras.layers.Conv2D(filters, 3, activation="relu")(features)
      features = keras.layers.MaxPooling2D()(features)
    features = keras.layers.Flatten()(features)
  else:
    backbone = spec.backbone(include_top=False, weights=weights,
                             input_shape=(image_size, image_size, 3))
    backbone.trainable = False
    # Inference mode (BatchNormalization on its moving statistics, no
    # stochastic-depth dropout), also after unfreezing for fine-tuning: batch
    # statistics of small batches would wreck the pretrained ones. Keras 3
    # would override training=False with fit's training=True without the fix.
    keras_compat.keep_inference_mode(backbone)
    features = backbone(features, training=False)
    features = keras.layers.GlobalAveragePooling2D(name=POOL_LAYER)(features)
  for units in head_units:
    features = keras.layers.Dense(units, activation="relu")(features)
  outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32",
                               name="probabilities")(features)
  model = keras.Model(inputs, outputs, name=name)
  if spec.backbone is None and weights:
    model.load_weights(weights)
  return model


def backbone_of(model: keras.Model) -> Optional[keras.Model]:
  """The pretrained backbone inside a transfer model, None for the CNNs."""
  for layer in model.layers:
    if isinstance(layer, keras.Model) and layer.name != "augmentation":
      return layer
  return None


def unfreeze_top(model: keras.Model, layers: int):
  """Makes the top `layers` layers of the backbone trainable, except the types its
  spec keeps frozen (`ModelSpec.frozen_when_fine_tuning`: BatchNorm).

  The model must be compiled again afterwards for the change to take effect.
  """
  backbone = backbone_of(model)
  if backbone is None:
    raise ValueError(f"--fine_tune needs a transfer model; {model.name} has no backbone.")
  frozen = REGISTRY[model.name].frozen_when_fine_tuning if model.name in REGISTRY else (
      keras.layers.BatchNormalization,)
  backbone.trainable = True
  for index, layer in enumerate(backbone.layers):
    top = index >= len(backbone.layers) - layers
    layer.trainable = top and not isinstance(layer, frozen)
