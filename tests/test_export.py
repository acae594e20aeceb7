"""trainers.export: parity with the Keras model, and an --out that never loses data."""

import json
import os
import subprocess
import sys

import pytest

from trainers import export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("export_format", ["saved_model", "tflite"])
def test_export_matches_keras_and_reports_beside_it(run_dir, export_format, tmp_path):
  out = str(tmp_path / ("model.tflite" if export_format == "tflite" else "saved_model"))
  result = export.export(str(run_dir), export_format, out, tolerance=1e-4, check_images=8)
  assert os.path.exists(out) and result["max_abs_diff"] <= 1e-4
  assert result["top1_agreement"] == 1.0 and result["check_images"] == 8
  report = json.loads((tmp_path / (os.path.basename(out) + ".json")).read_text())
  assert report["format"] == export_format and report["bytes"] > 0


def test_export_that_fails_its_check_is_not_written(run_dir, tmp_path):
  out = tmp_path / "model.tflite"
  export.export(str(run_dir), "tflite", str(out), check_images=2)
  before = out.read_bytes()
  with pytest.raises(ValueError, match="differs from the Keras model .* not written"):
    export.export(str(run_dir), "tflite", str(out), tolerance=-1, check_images=4)
  assert out.read_bytes() == before  # the previous export stays
  assert sorted(path.name for path in tmp_path.iterdir()) == ["model.tflite",
                                                              "model.tflite.json"]


def test_a_previous_export_of_ours_is_replaced(run_dir, tmp_path):
  out = tmp_path / "saved_model"
  export.export(str(run_dir), "saved_model", str(out), check_images=2)
  export.export(str(run_dir), "saved_model", str(out), check_images=2)
  assert (out / "saved_model.pb").exists()


@pytest.mark.parametrize("export_format", ["saved_model", "tflite"])
def test_the_run_folder_itself_is_never_an_export_target(run_dir, export_format):
  before = sorted(os.listdir(run_dir))
  with pytest.raises(ValueError, match=r"--out=.* is an existing folder that is not an export "
                                       r"of ours .*nothing was touched"):
    export.export(str(run_dir), export_format, str(run_dir), check_images=2)
  assert sorted(os.listdir(run_dir)) == before and (run_dir / "metrics.json").exists()


@pytest.mark.parametrize("export_format", ["saved_model", "tflite"])
def test_a_user_s_folder_or_file_at_out_is_left_alone(run_dir, tmp_path, export_format):
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "thesis.tex").write_text("years of work")
  (tmp_path / "notes.txt").write_text("mine too")
  for out in (tmp_path / "mine", tmp_path / "notes.txt"):
    with pytest.raises(ValueError, match="is not an export of ours"):
      export.export(str(run_dir), export_format, str(out), check_images=2)
  assert (tmp_path / "mine" / "thesis.tex").read_text() == "years of work"
  assert (tmp_path / "notes.txt").read_text() == "mine too"


def test_an_export_with_a_user_s_file_added_is_not_replaced(run_dir, tmp_path):
  out = tmp_path / "saved_model"
  export.export(str(run_dir), "saved_model", str(out), check_images=2)
  (out / "README.txt").write_text("added by hand")
  with pytest.raises(ValueError, match="was changed since it was exported"):
    export.export(str(run_dir), "saved_model", str(out), check_images=2)
  assert (out / "README.txt").exists()
  with pytest.raises(ValueError, match="holds a saved_model export, not tflite"):
    export.export(str(run_dir), "tflite", str(out), check_images=2)


def test_bad_arguments_and_unwritable_out_are_one_line(run_dir, tmp_path):
  with pytest.raises(ValueError, match="--check_images must be at least 1, got 0"):
    export.export(str(run_dir), "tflite", str(tmp_path / "m.tflite"), check_images=0)
  (tmp_path / "a_file").write_text("")
  with pytest.raises(ValueError, match="is an existing file that is not an export of ours"):
    export.export(str(run_dir), "saved_model", str(tmp_path / "a_file"), check_images=2)
  # A folder that cannot be made or written (here a file in the way; a read-only
  # mount fails the same call with EROFS, which root's tests cannot make).
  with pytest.raises(ValueError, match=r"--out=.*a_file/m.tflite cannot be written \(File "
                                       r"exists\): choose a folder you can write to"):
    export.export(str(run_dir), "tflite", str(tmp_path / "a_file" / "m.tflite"),
                  check_images=2)


def test_cli_refusal_is_one_line_and_exit_1(run_dir):
  result = subprocess.run([sys.executable, "-m", "trainers.export", f"--model_dir={run_dir}",
                           "--format=tflite", f"--out={run_dir}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith("error: --out=")
