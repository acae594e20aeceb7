"""trainers.export: parity with the Keras model, quantized TFLite with a guarded accuracy
drop, serving any image format, and an --out that never loses data."""

import io
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from trainers.serving import export
from trainers.serving import predict
from trainers.evaluation import results
from trainers.serving import tflite_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("export_format", ["saved_model", "tflite"])
def test_export_matches_keras_and_reports_beside_it(run_dir, export_format, tmp_path):
  out = str(tmp_path / ("model.tflite" if export_format == "tflite" else "saved_model"))
  result = export.export(str(run_dir), export_format, out, tolerance=1e-4, latency_runs=0)
  run = results.load(str(run_dir))
  assert os.path.exists(out) and result["max_probability_difference"] <= 1e-4
  assert result["top1_agreement"] == 1.0
  # The whole test split the run evaluated, and the run's own accuracy on it.
  assert result["test_images"] == run.metrics["test_images"] == len(run.predictions)
  assert result["accuracy_test"] == result["keras_accuracy_test"] == pytest.approx(
      run.metrics["accuracy_test"])
  report = json.loads((tmp_path / (os.path.basename(out) + ".json")).read_text())
  assert {"format", "quantize", "bytes", "accuracy_test", "keras_accuracy_test",
          "top1_agreement", "max_probability_difference", "latency_ms"} <= set(report)
  assert report["format"] == export_format and report["quantize"] == "none"
  assert report["bytes"] > 0 and report["latency_ms"] is None


def test_export_that_fails_its_check_is_not_written(run_dir, tmp_path):
  out = tmp_path / "model.tflite"
  export.export(str(run_dir), "tflite", str(out), latency_runs=0)
  before = out.read_bytes()
  with pytest.raises(ValueError, match="differs from the Keras model .* not written"):
    export.export(str(run_dir), "tflite", str(out), tolerance=-1, latency_runs=0)
  assert out.read_bytes() == before  # the previous export stays
  assert sorted(path.name for path in tmp_path.iterdir()) == ["model.tflite",
                                                              "model.tflite.json"]


def test_a_previous_export_of_ours_is_replaced(run_dir, tmp_path):
  out = tmp_path / "saved_model"
  export.export(str(run_dir), "saved_model", str(out), latency_runs=0)
  export.export(str(run_dir), "saved_model", str(out), latency_runs=0)
  assert (out / "saved_model.pb").exists()


@pytest.mark.parametrize("export_format", ["saved_model", "tflite"])
def test_the_run_folder_itself_is_never_an_export_target(run_dir, export_format):
  before = sorted(os.listdir(run_dir))
  with pytest.raises(ValueError, match=r"--out=.* is an existing folder that is not an export "
                                       r"of ours .*nothing was touched"):
    export.export(str(run_dir), export_format, str(run_dir), latency_runs=0)
  assert sorted(os.listdir(run_dir)) == before and (run_dir / "metrics.json").exists()


@pytest.mark.parametrize("export_format", ["saved_model", "tflite"])
def test_a_user_s_folder_or_file_at_out_is_left_alone(run_dir, tmp_path, export_format):
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "thesis.tex").write_text("years of work")
  (tmp_path / "notes.txt").write_text("mine too")
  for out in (tmp_path / "mine", tmp_path / "notes.txt"):
    with pytest.raises(ValueError, match="is not an export of ours"):
      export.export(str(run_dir), export_format, str(out), latency_runs=0)
  assert (tmp_path / "mine" / "thesis.tex").read_text() == "years of work"
  assert (tmp_path / "notes.txt").read_text() == "mine too"


def test_an_export_with_a_user_s_file_added_is_not_replaced(run_dir, tmp_path):
  out = tmp_path / "saved_model"
  export.export(str(run_dir), "saved_model", str(out), latency_runs=0)
  (out / "README.txt").write_text("added by hand")
  with pytest.raises(ValueError, match="was changed since it was exported"):
    export.export(str(run_dir), "saved_model", str(out), latency_runs=0)
  assert (out / "README.txt").exists()
  with pytest.raises(ValueError, match="holds a saved_model export, not tflite"):
    export.export(str(run_dir), "tflite", str(out), latency_runs=0)


def test_bad_arguments_and_unwritable_out_are_one_line(run_dir, tmp_path):
  for arguments, message in (
      (dict(quantize="int8", calibration_images=0), "--calibration_images must be at least 1"),
      (dict(quantize="float16", io="uint8"), "--io=uint8 needs --quantize=int8"),
      (dict(latency_runs=-1), "--latency_runs must be 0"),
      (dict(max_accuracy_drop=float("nan")), "--max_accuracy_drop must be a finite number"),
      (dict(max_accuracy_drop=float("inf")), "an infinite or NaN guard"),
  ):
    with pytest.raises(ValueError, match=message):
      export.export(str(run_dir), "tflite", str(tmp_path / "m.tflite"), **arguments)
  with pytest.raises(ValueError, match="--quantize and --io are for --format=tflite"):
    export.export(str(run_dir), "saved_model", str(tmp_path / "s"), quantize="int8")
  assert not (tmp_path / "m.tflite").exists() and not (tmp_path / "s").exists()
  (tmp_path / "a_file").write_text("")
  with pytest.raises(ValueError, match="is an existing file that is not an export of ours"):
    export.export(str(run_dir), "saved_model", str(tmp_path / "a_file"), latency_runs=0)
  # A folder that cannot be made or written (here a file in the way; a read-only
  # mount fails the same call with EROFS, which root's tests cannot make).
  with pytest.raises(ValueError, match=r"--out=.*a_file/m.tflite cannot be written \(File "
                                       r"exists\): choose a folder you can write to"):
    export.export(str(run_dir), "tflite", str(tmp_path / "a_file" / "m.tflite"),
                  latency_runs=0)


def test_cli_refusal_is_one_line_and_exit_1(run_dir):
  result = subprocess.run([sys.executable, "-m", "trainers.export", f"--model_dir={run_dir}",
                           "--format=tflite", f"--out={run_dir}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith("error: --out=")


def test_int8_takes_uint8_pixels_and_predict_runs_the_file(run_dir, tmp_path, images):
  """A CNN exports as full-integer int8; predict --model runs the deployed file itself."""
  out = tmp_path / "cnn2_int8.tflite"
  report = export.export(str(run_dir), "tflite", str(out), quantize="int8",
                         calibration_images=16, max_accuracy_drop=1.0, latency_runs=0)
  assert report["quantize"] == "int8" and report["io"] == "uint8"
  assert report["calibration_images"] == 16
  runner = tflite_file.Runner(str(out))
  assert runner.input_type == "uint8" and runner.image_size == 40
  probabilities = runner.probabilities(np.zeros((3, 40, 40, 3), np.uint8))
  assert probabilities.shape == (3, 10) and probabilities.dtype == np.float32
  np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=0.02)
  files = [str(images / "dog.jpg"), str(images / "rgba.png")]
  deployed, errors = predict.predict(None, files, top_k=10, model=str(out))
  assert errors == [] and [item["path"] for item in deployed] == files
  # The float32 file gives the run's own probabilities through the same decode path.
  float_out = tmp_path / "cnn2.tflite"
  export.export(str(run_dir), "tflite", str(float_out), latency_runs=0)
  by_file, _ = predict.predict(None, files, top_k=10, model=str(float_out))
  by_run, _ = predict.predict(str(run_dir), files, top_k=10)
  for file_item, run_item in zip(by_file, by_run):
    got = {p["label"]: p["probability"] for p in file_item["predictions"]}
    for expected in run_item["predictions"]:
      assert got[expected["label"]] == pytest.approx(expected["probability"], abs=1e-5)


def test_an_accuracy_drop_past_the_guard_writes_nothing(run_dir, tmp_path):
  out = tmp_path / "model.tflite"
  with pytest.raises(ValueError, match=r"the dynamic tflite export's test accuracy is .* on "
                                       r"\d+ test images \(drop .* > --max_accuracy_drop=-1\): "
                                       "not written"):
    export.export(str(run_dir), "tflite", str(out), quantize="dynamic",
                  max_accuracy_drop=-1, latency_runs=0)
  assert list(tmp_path.iterdir()) == []


def test_predict_refuses_a_tflite_file_without_its_report_or_changed(run_dir, tmp_path, images):
  out = tmp_path / "model.tflite"
  export.export(str(run_dir), "tflite", str(out), latency_runs=0)
  copy = tmp_path / "copy.tflite"
  copy.write_bytes(out.read_bytes())
  with pytest.raises(ValueError, match="has no TFLite export report .*copy.tflite.json"):
    predict.predict(None, [str(images)], model=str(copy))
  with open(out, "ab") as file:
    file.write(b"\0")
  with pytest.raises(ValueError, match="is not the file its report .* describes"):
    predict.predict(None, [str(images)], model=str(out))
  with pytest.raises(ValueError, match="give either --model_dir"):
    predict.predict(str(run_dir), [str(images)], model=str(out))
  with pytest.raises(ValueError, match="--explain needs --model_dir"):
    predict.predict(None, [str(images)], model=str(out), explain_dir=str(tmp_path / "x"))


def _encoded(image: Image.Image, image_format: str) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, image_format)
  return buffer.getvalue()


def test_serving_default_takes_any_image_format_as_predict_does(run_dir, tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out = tmp_path / "saved_model"
  export.export(str(run_dir), "saved_model", str(out), latency_runs=0)
  pixels = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
  pixels = np.asarray(Image.fromarray(pixels).resize((240, 180), Image.BILINEAR))
  rgba = np.concatenate([pixels, np.full((180, 240, 1), 128, np.uint8)], axis=2)
  files = {"photo.png": _encoded(Image.fromarray(pixels), "PNG"),
           "rgba.png": _encoded(Image.fromarray(rgba, "RGBA"), "PNG"),
           "gray.jpg": _encoded(Image.fromarray(pixels).convert("L"), "JPEG"),
           "photo.gif": _encoded(Image.fromarray(pixels), "GIF"),
           "photo.bmp": _encoded(Image.fromarray(pixels), "BMP")}
  for name, data in files.items():
    (tmp_path / name).write_bytes(data)
  serve = tf.saved_model.load(str(out)).signatures["serving_default"]
  served = serve(image_bytes=tf.constant(list(files.values())))["probabilities"].numpy()
  predicted, errors = predict.predict(str(run_dir), [str(tmp_path / name) for name in files],
                                      top_k=10)
  assert errors == []
  names = ("dog", "horse", "elephant", "butterfly", "chicken", "cat", "cow", "sheep",
           "spider", "squirrel")
  for name, row, item in zip(files, served, predicted):
    by_label = {p["label"]: p["probability"] for p in item["predictions"]}
    # predict stores a file as the dataset does (an RGB JPEG) before decoding it; the
    # served probabilities differ from its only by that JPEG round trip.
    np.testing.assert_allclose(row, [by_label[label] for label in names], atol=0.02,
                               err_msg=name)
    assert row.argmax() == names.index(item["predictions"][0]["label"]), name


# --- The report beside --out: only ever ours, checkable, and placed recoverably. --------
@pytest.mark.parametrize("export_format", ["saved_model", "tflite"])
def test_a_report_path_holding_a_file_not_ours_is_never_written(run_dir, tmp_path,
                                                                 export_format):
  """--out=RUN/metrics would put the report on metrics.json; --out=DIR/notes on notes.json."""
  metrics = (run_dir / "metrics.json").read_bytes()
  with pytest.raises(ValueError, match="metrics.json, an existing file that is not an export "
                                       "report of ours: nothing was touched"):
    export.export(str(run_dir), export_format, str(run_dir / "metrics"), latency_runs=0)
  assert (run_dir / "metrics.json").read_bytes() == metrics
  assert not (run_dir / "metrics").exists()
  (tmp_path / "notes.json").write_text('{"mine": true}')
  with pytest.raises(ValueError, match="not an export report of ours"):
    export.export(str(run_dir), export_format, str(tmp_path / "notes"), latency_runs=0)
  assert (tmp_path / "notes.json").read_text() == '{"mine": true}'
  assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.json"]


def test_an_edited_report_is_refused_by_predict_and_by_a_new_export(run_dir, tmp_path, images):
  out = tmp_path / "a.tflite"
  export.export(str(run_dir), "tflite", str(out), latency_runs=0)
  report_file = tmp_path / "a.tflite.json"
  report = json.loads(report_file.read_text())
  for edit in (dict(resize="bogus"), dict(image_size=64), dict(dataset=None)):
    edited = {**report, **edit}
    if edit.get("dataset", "") is None:
      del edited["dataset"]
    report_file.write_text(json.dumps(edited))
    with pytest.raises(ValueError, match="was edited since the export wrote it"):
      predict.predict(None, [str(images / "dog.jpg")], model=str(out))
    with pytest.raises(ValueError, match="was edited since the export wrote it: nothing was "
                                         "touched"):
      export.export(str(run_dir), "tflite", str(out), latency_runs=0)
  report_file.write_text(json.dumps(report))  # as written: used again
  predicted, _ = predict.predict(None, [str(images / "dog.jpg")], model=str(out))
  assert len(predicted) == 1


def _dead_pid() -> int:
  done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  return int(done.stdout)


def test_a_kill_between_the_export_and_its_report_is_finished_not_blamed(run_dir, tmp_path,
                                                                        images):
  """As if killed after the export's rename and before its report's: the new report still
  waits in our scratch folder; predict and a new export finish the placement."""
  from trainers.serving import export_report  # pylint: disable=g-import-not-at-top
  from trainers.runs import run_folder  # pylint: disable=g-import-not-at-top
  out = tmp_path / "a.tflite"
  export.export(str(run_dir), "tflite", str(out), latency_runs=0)
  assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".tmp-")] == []
  for finish in ("predict", "export"):
    scratch = run_folder.scratch_folder(str(tmp_path), export_report.SCRATCH_PREFIX,
                                        out=str(out))
    record = os.path.join(scratch, run_folder.SCRATCH_RECORD)
    with open(record, "w") as file:
      json.dump({"out": str(out), "pid": _dead_pid()}, file)
    os.replace(tmp_path / "a.tflite.json", os.path.join(scratch, "report.json"))
    if finish == "predict":
      predicted, errors = predict.predict(None, [str(images / "dog.jpg")], model=str(out))
      assert errors == [] and len(predicted) == 1
    else:
      export.export(str(run_dir), "tflite", str(out), latency_runs=0)
    assert (tmp_path / "a.tflite.json").exists() and not os.path.exists(scratch)
  assert sorted(path.name for path in tmp_path.iterdir()) == ["a.tflite", "a.tflite.json"]


def test_int8_calibrates_only_on_what_the_run_trained_on(run_dir):
  from trainers.runs import settings as settings_lib
  config = settings_lib.load(str(run_dir))
  every = export.calibration_set(config, 10_000)
  first = export.calibration_set(config, 1)
  import dataclasses  # pylint: disable=g-import-not-at-top
  from trainers.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  from trainers.data import records as records_lib  # pylint: disable=g-import-not-at-top
  builder = dataset_lib.builder(config.dataset, config.data_dir)
  _, names = records_lib.labels_and_names(records_lib.records(builder, "train"))
  excluded = dataclasses.replace(config, exclude=tuple(names[:5]))
  assert len(export.calibration_set(excluded, 10_000)) == len(every) - 5
  assert len(first) == 1
