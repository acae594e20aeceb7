"""Grad-CAM with a known answer, and the error gallery's choice of mistakes."""

import os

import keras
import numpy as np
from PIL import Image
import pytest

from trainers import config as config_lib
from trainers.runs import settings as settings_lib
from trainers.evaluation import explain
from trainers.evaluation import figures
from trainers.modeling import models
from trainers.serving import predict
from trainers.training import recipe


def _patch_images(rng, sides):
  """32x32 dim noise with one bright 8x8 patch in the left (0) or right (1) half."""
  images = rng.uniform(0, 30, (len(sides), 32, 32, 3)).astype(np.float32)
  for image, side in zip(images, sides):
    top, left = rng.integers(0, 25), rng.integers(0, 9) + 16 * side
    image[top:top + 8, left:left + 8] = 255
  return images


@pytest.fixture
def mixed_precision():
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  yield
  keras.mixed_precision.set_global_policy("float32")


@pytest.mark.slow  # 20-40 s of training or fresh processes (CI runs it)
def test_heat_falls_on_the_half_whose_patch_decides_the_class(mixed_precision):
  rng = np.random.default_rng(0)
  keras.utils.set_random_seed(0)
  sides = rng.integers(0, 2, 512)
  model = models.build_model("cnn2", 32)
  model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                metrics=["accuracy"])
  model.fit(_patch_images(rng, sides), sides, epochs=4, batch_size=32, verbose=0)
  test_sides = np.array([0, 1] * 8)
  test_images = _patch_images(rng, test_sides)
  heat, top = explain.grad_cam(model, test_images)
  assert (top == test_sides).all()  # the task is learned, so its explanation means something
  assert heat.shape == (16, 32, 32) and heat.min() >= 0 and heat.max() <= 1
  left = heat[:, :, :16].sum(axis=(1, 2)) / heat.sum(axis=(1, 2))
  on_patch_half = np.where(test_sides == 0, left, 1 - left)
  assert on_patch_half.min() > 0.55 and on_patch_half.mean() > 0.62, on_patch_half
  peak_columns = heat.reshape(16, -1).argmax(axis=1) % 32
  assert ((peak_columns >= 16) == test_sides).all(), peak_columns  # hottest pixel: patch half


def test_a_model_without_a_feature_map_cannot_be_explained():
  inputs = keras.Input((8, 8, 3))
  model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs)))
  with pytest.raises(ValueError, match="cannot explain model"):
    explain.feature_map(model)


def test_gallery_takes_the_most_confident_mistakes_four_per_true_class():
  # rows: (true label, predicted class, its probability)
  table = [(0, 1, .9), (0, 0, .99), (0, 2, .5), (0, 3, .8), (0, 1, .7), (0, 4, .6),
           (1, 0, .95), (1, 1, .3), (2, 3, .4)] + [(3, 4, .2)] * 40
  labels = np.array([row[0] for row in table])
  probabilities = np.zeros((len(table), 10))
  for index, (_, predicted, probability) in enumerate(table):
    probabilities[index] = (1 - probability) / 9
    probabilities[index, predicted] = probability
  chosen = figures.select_errors(labels, probabilities)
  # by confidence; true class 0 is capped at 4 (its .5 mistake, row 2, is left out),
  # right answers (rows 1 and 7) are no mistakes, class 3 gets its first 4 (ties by row)
  assert chosen == [6, 0, 3, 4, 5, 8, 9, 10, 11, 12]
  assert len(figures.select_errors(labels, probabilities, per_class=40)) == 40


@pytest.mark.parametrize("name", ["mnv2", "mnv2_035"])
def test_explain_writes_a_picture_per_image_for_a_saved_transfer_model(sample_dir, tmp_path,
                                                                       name):
  run = tmp_path / "run"
  run.mkdir()
  model = models.build_model(name, 32, weights=None)
  recipe.compile_for_saving(model)
  model.save(run / "model.keras")
  settings_lib.save(config_lib.Config(model=name, model_dir=str(run), image_size=32))
  folder = sample_dir / "raw-img" / "gatto"
  files = sorted(folder.iterdir())[:3]
  results, errors = predict.predict(str(run), [str(path) for path in files],
                                    explain_dir=str(tmp_path / "explained"))
  assert len(results) == 3 and not errors
  for path in files:
    picture = tmp_path / "explained" / (os.path.splitext(path.name)[0] + ".png")
    assert Image.open(picture).size[0] > 100
