r"""Finds a registry model's ImageNet weights file: Keras's cache, else a download.

    python -m tools.imagenet_weights --model=mnv2_035 --image_size=160

Prints the file's path and exits 0; or prints one line saying what is missing and
where to put it, and exits 1 (offline, without the file in `$KERAS_HOME/models`).
`tools/demo.sh` uses it to choose between ImageNet and random weights.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
import keras  # pylint: disable=g-import-not-at-top

from trainers import cli  # pylint: disable=g-import-not-at-top
from trainers.modeling import models  # pylint: disable=g-import-not-at-top
from trainers.modeling import weights as weights_lib  # pylint: disable=g-import-not-at-top

_FLAGS = flags.FLAGS


def find(model: str, image_size: int) -> str:
  """The path of the model's ImageNet weights file, downloaded into Keras's cache
  if it is not there yet.

  Raises:
    ValueError: a model without ImageNet weights, or the file cannot be had.
  """
  resolved = weights_lib.resolve(model, "imagenet", image_size)
  if resolved is None:
    raise ValueError(f"{model} has no ImageNet weights (the study's CNNs train from scratch).")
  if resolved != "imagenet":  # in the cache already: checked to be this model's weights
    built = models.build_model(model, image_size, weights=None)
    weights_lib.load_into(models.backbone_of(built) or built, resolved, model)
    return resolved
  try:
    # Built once with weights="imagenet": Keras downloads the file into its cache.
    models.build_model(model, image_size, weights="imagenet")
  except Exception as error:  # pylint: disable=broad-except
    if weights_lib.download_failed(error):
      raise ValueError(weights_lib.offline_message(model, image_size)) from None
    raise
  return weights_lib.resolve(model, "imagenet", image_size)


def main(argv):
  cli.no_arguments(argv)
  cli.quiet_logs()
  keras.config.disable_interactive_logging()  # the download's progress bar
  try:
    print(find(_FLAGS.model, _FLAGS.image_size))
  except (ValueError, weights_lib.WeightsError) as error:
    sys.exit(f"{error}")


def _define_flags():
  flags.DEFINE_enum("model", None, [name for name, spec in models.REGISTRY.items()
                                    if spec.imagenet_file], "A transfer model.", required=True)
  flags.DEFINE_integer("image_size", 160, "Input side (Keras names MobileNetV2 files by it).")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
