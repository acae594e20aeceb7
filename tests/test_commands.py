"""The design card's commands, typed exactly as written, from any folder."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFDS = os.path.join(os.path.dirname(sys.executable), "tfds")


@pytest.mark.slow  # 20-40 s of training or fresh processes (CI runs it)
def test_train_without_data_dir_or_model_dir_uses_tfds_default_and_a_new_run_folder(
    data_dir, tmp_path):
  """`python -m trainers.main --model=M`: data from TFDS_DATA_DIR, a new work/runs folder,
  and a console with our lines and Keras's progress only (TensorFlow 2.21's own C++
  start-up lines, printed before its log settings are read, are the exception)."""
  env = dict(os.environ, TFDS_DATA_DIR=str(data_dir))
  command = [sys.executable, "-m", "trainers.main", "--model=cnn2", "--epochs=1",
             "--steps_per_epoch=2", "--image_size=32", "--batch_size=16",
             "--deterministic", "--balance=undersample"]  # as tools.reproduce runs the study
  result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  first = result.stdout.splitlines()[0]
  assert first.startswith("run folder: work/runs/cnn2-"), first
  folder = first.split()[2]
  assert f"--flagfile={folder}/flags.txt" in first
  assert json.loads((tmp_path / folder / "metrics.json").read_text())["test_images"] > 0
  assert f"--model_dir={folder}" in (tmp_path / folder / "flags.txt").read_text()
  console = result.stdout + result.stderr
  for noise in ("TensorInfo.dtype", "INFO:tensorflow", "dataset_info.py", "Traceback",
                "Your input ran out of data", "use_unbounded_threadpool"):
    assert noise not in console, noise


def test_a_new_run_folder_is_never_an_existing_one(tmp_path, monkeypatch):
  from trainers import main  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)
  first = main._new_run_folder("dn121")  # pylint: disable=protected-access
  os.makedirs(first)
  second = main._new_run_folder("dn121")  # pylint: disable=protected-access
  assert second != first and not os.path.exists(second)
  assert os.path.dirname(first) == os.path.join("work", "runs")


@pytest.mark.slow  # 20-40 s of training or fresh processes (CI runs it)
def test_tfds_build_from_another_folder_with_imports(tmp_path):
  manual = os.path.join(REPO, "animals10_tfds", "dummy_data")
  data = tmp_path / "data"
  bare = subprocess.run([TFDS, "build", "animals10_tfds", f"--manual_dir={manual}",
                         f"--data_dir={data}", "--config=160px"], cwd=tmp_path,
                        capture_output=True, text=True, timeout=300)
  assert bare.returncode != 0  # TFDS does not import our package outside the repo root
  built = subprocess.run([TFDS, "build", "animals10_tfds", "--imports", "animals10_tfds",
                          f"--manual_dir={manual}", f"--data_dir={data}", "--config=160px"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert built.returncode == 0, built.stderr[-2000:]
  assert (data / "animals10_tfds" / "160px" / "1.0.0" / "dataset_info.json").exists()
