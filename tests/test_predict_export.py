"""trainers.predict on good, odd and broken files; trainers.export parity."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from trainers import config as config_lib
from trainers import export
from trainers import predict
from trainers import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory):
  folder = tmp_path_factory.mktemp("run") / "cnn2"
  train.train_and_evaluate(config_lib.Config(
      model="cnn2", model_dir=str(folder), data_dir=str(data_dir), image_size=40,
      resize="stretch", batch_size=16, epochs=1, steps_per_epoch=3, weights="none"))
  return folder


@pytest.fixture(scope="module")
def images(sample_dir, tmp_path_factory):
  folder = tmp_path_factory.mktemp("images")
  dog = sorted((sample_dir / "raw-img" / "cane").iterdir())[0]
  picture = Image.open(dog).convert("RGB")
  (folder / "dog.jpg").write_bytes(dog.read_bytes())
  picture.convert("CMYK").save(folder / "cmyk.jpg")
  picture.convert("RGBA").save(folder / "rgba.png")
  (folder / "notes.jpg").write_text("not an image")
  return folder


def test_predict_reports_good_files_and_one_line_per_bad_one(run_dir, images):
  results, errors = predict.predict(str(run_dir), [str(images), str(images / "missing.jpg")],
                                    top_k=2)
  assert sorted(os.path.basename(item["path"]) for item in results) == [
      "cmyk.jpg", "dog.jpg", "rgba.png"]
  for item in results:
    probabilities = [p["probability"] for p in item["predictions"]]
    assert len(probabilities) == 2 and probabilities[0] >= probabilities[1] > 0
  reasons = {os.path.basename(item["path"]): item["error"] for item in errors}
  assert reasons["notes.jpg"] == "not an image Pillow can read"
  assert reasons["missing.jpg"].startswith("unreadable")


def test_predict_cli_json_and_exit_status(run_dir, images):
  result = subprocess.run([sys.executable, "-m", "trainers.predict", f"--model_dir={run_dir}",
                           "--json", str(images / "dog.jpg"), str(images / "notes.jpg")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  output = json.loads(result.stdout)
  expected, _ = predict.predict(str(run_dir), [str(images / "dog.jpg")], top_k=3)
  cli = output["predictions"][0]["predictions"]
  assert [item["label"] for item in cli] == [item["label"] for item in expected[0]["predictions"]]
  np.testing.assert_allclose([item["probability"] for item in cli],
                             [item["probability"] for item in expected[0]["predictions"]],
                             atol=1e-6)
  assert "error: " in result.stderr and "notes.jpg" in result.stderr
  assert "Traceback" not in result.stderr


def test_predict_gives_the_saved_model_s_probabilities_at_the_run_s_size(run_dir, images):
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from trainers import input_pipeline  # pylint: disable=g-import-not-at-top
  results, _ = predict.predict(str(run_dir), [str(images / "dog.jpg")], top_k=10)
  got = {p["label"]: p["probability"] for p in results[0]["predictions"]}
  model = keras.saving.load_model(str(run_dir / "model.keras"))
  image = input_pipeline.decode_and_resize((images / "dog.jpg").read_bytes(), 40, "stretch")
  expected = model.predict(tf.cast(image, tf.float32)[None], verbose=0)[0]
  labels = ("dog", "horse", "elephant", "butterfly", "chicken", "cat", "cow", "sheep",
            "spider", "squirrel")
  np.testing.assert_allclose([got[label] for label in labels], expected, atol=1e-6)


@pytest.mark.parametrize("export_format", ["saved_model", "tflite"])
def test_export_matches_keras(run_dir, export_format, tmp_path):
  out = str(tmp_path / ("model.tflite" if export_format == "tflite" else "saved_model"))
  result = export.export(str(run_dir), export_format, out, tolerance=1e-4, check_images=8)
  assert os.path.exists(out) and result["max_abs_diff"] <= 1e-4


def test_export_that_fails_its_check_is_not_written(run_dir, tmp_path):
  out = tmp_path / "model.tflite"
  out.write_bytes(b"the previous export")
  with pytest.raises(ValueError, match="differs from the Keras model .* not written"):
    export.export(str(run_dir), "tflite", str(out), tolerance=-1, check_images=4)
  assert out.read_bytes() == b"the previous export"
  assert sorted(path.name for path in tmp_path.iterdir()) == ["model.tflite"]


def test_not_a_run_folder_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="is not a run folder .*python -m trainers.main"):
    predict.predict(str(tmp_path), [str(tmp_path)])
  config_lib.save(config_lib.Config(model="cnn2", model_dir=str(tmp_path)))
  with pytest.raises(ValueError, match="is not a finished run .*--flagfile="):
    export.export(str(tmp_path), "tflite")


def test_config_json_gives_back_the_config_trained_with(run_dir, data_dir):
  config = config_lib.load(str(run_dir))
  assert config == config_lib.Config(
      model="cnn2", model_dir=str(run_dir), data_dir=str(data_dir), image_size=40,
      resize="stretch", batch_size=16, epochs=1, steps_per_epoch=3, weights="none")
  assert isinstance(config.head_units, tuple)


def test_resuming_with_other_settings_is_refused(run_dir, data_dir):
  (run_dir / "metrics.json").rename(run_dir / "metrics.moved")
  try:
    with pytest.raises(ValueError, match=r"holds a run with other settings \(--image_size=40 "
                                         r"before, 48 now\): use a new --model_dir"):
      train.train_and_evaluate(config_lib.Config(
          model="cnn2", model_dir=str(run_dir), data_dir=str(data_dir), image_size=48,
          resize="stretch", batch_size=16, epochs=1, steps_per_epoch=3, weights="none"))
  finally:
    (run_dir / "metrics.moved").rename(run_dir / "metrics.json")
