"""trainers.predict on good, odd and broken files; a finished run's config.json."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from trainers import config as config_lib
from trainers.runs import settings as settings_lib
from trainers.serving import export
from trainers.serving import predict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
  """As the run's records were made: stored at 160 px (its 160px config), then decoded."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from animals10_tfds import image as image_lib  # pylint: disable=g-import-not-at-top
  from trainers.data import input_pipeline  # pylint: disable=g-import-not-at-top
  results, _ = predict.predict(str(run_dir), [str(images / "dog.jpg")], top_k=10)
  got = {p["label"]: p["probability"] for p in results[0]["predictions"]}
  model = keras.saving.load_model(str(run_dir / "model.keras"))
  stored, _ = image_lib.rgb_jpeg_or_reason((images / "dog.jpg").read_bytes(), 160)
  image = input_pipeline.decode_and_resize(stored, 40, "stretch")
  expected = model.predict(tf.cast(image, tf.float32)[None], verbose=0)[0]
  labels = ("dog", "horse", "elephant", "butterfly", "chicken", "cat", "cow", "sheep",
            "spider", "squirrel")
  np.testing.assert_allclose([got[label] for label in labels], expected, atol=1e-6)


def test_not_a_run_folder_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="is not a run folder .*python -m trainers.main"):
    predict.predict(str(tmp_path), [str(tmp_path)])
  settings_lib.save(config_lib.Config(model="cnn2", model_dir=str(tmp_path)))
  with pytest.raises(ValueError, match="is not a finished run .*--flagfile="):
    export.export(str(tmp_path), "tflite")


@pytest.mark.parametrize("arguments, message", [
    (dict(top_k=0), "--top_k must be between 1 and 10, got 0"),
    (dict(top_k=-2), "--top_k must be between 1 and 10, got -2"),
    (dict(batch_size=0), "--batch_size must be at least 1, got 0"),
])
def test_out_of_range_arguments_are_refused_before_any_work(run_dir, images, arguments,
                                                            message):
  with pytest.raises(ValueError, match=message):
    predict.predict(str(run_dir), [str(images)], **arguments)


def test_an_explain_folder_that_cannot_be_written_is_refused_before_predicting(run_dir, images,
                                                                               tmp_path):
  (tmp_path / "a_file").write_text("")
  with pytest.raises(ValueError, match=r"--explain=.*a_file cannot be written .*nothing was "
                                       r"predicted"):
    predict.predict(str(run_dir), [str(images)], explain_dir=str(tmp_path / "a_file"))


def test_predictions_stand_when_writing_an_explanation_fails(run_dir, images, tmp_path,
                                                             monkeypatch):
  def disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(predict.explain, "write", disk_full)
  results, errors = predict.predict(str(run_dir), [str(images / "dog.jpg")],
                                    explain_dir=str(tmp_path / "explained"))
  assert len(results) == 1 and results[0]["predictions"]
  assert errors == [{"path": str(tmp_path / "explained"),
                     "error": "explanations not written: No space left on device"}]


def test_a_file_name_with_a_newline_stays_on_its_row():
  row = predict.table_row("folder/two\nlines\t.jpg", [{"label": "dog", "probability": 0.5}])
  assert row == "folder/two\\nlines\\t.jpg\tdog 0.500" and len(row.splitlines()) == 1


def test_tied_probabilities_rank_as_argmax_does():
  """An int8 file's probabilities come in steps of 1/256: ties are common, and the
  top-1 must be argmax's (the lower class index), as in the run's predictions."""
  row = np.array([0.1, 0.3, 0.3, 0.05, 0.25], np.float32)
  assert predict.top_indices(row, 1) == [int(row.argmax())] == [1]
  assert predict.top_indices(row, 3) == [1, 2, 4]
