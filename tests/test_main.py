"""python -m trainers.main as a user runs it: outputs, flagfile, kill -9 and SIGTERM, bad flags."""

import json
import os
import signal
import stat
import subprocess
import sys
import time

from PIL import Image
import pytest

from trainers.runs import settings as settings_lib
from trainers.runs import run_folder
import trainer_runs

REPO = trainer_runs.REPO


def test_run_folder_has_the_study_columns_and_reruns_from_its_flagfile(data_dir, tmp_path):
  run = tmp_path / "run"
  result = trainer_runs.main_command("--model=cnn2", f"--data_dir={data_dir}", f"--model_dir={run}",
                 "--image_size=48", "--epochs=2", "--batch_size=16", "--balance=undersample")
  assert result.returncode == 0, result.stderr[-2000:]
  metrics = json.loads((run / "metrics.json").read_text())
  for column in ("accuracy_train", "val_accuracy_train", "accuracy_test", "precision_test",
                 "recall_test", "f1-score_test"):
    assert 0 <= metrics[column] <= 1, column
  for column in ("loss_train", "val_loss_train"):
    assert 0 < metrics[column] < 50, column  # a cross-entropy, finite
  assert len(metrics["confusion_matrix"]) == 10
  support = {value["support"] for value in metrics["per_class"].values()}
  assert len(support) == 1  # undersampled test split: every class the same count
  for name in ("model.keras", "history.csv", "predictions.csv", "confusion.png", "flags.txt"):
    assert (run / name).stat().st_size > 0
  for name in ("confusion.png", "per_class.png", "errors.png"):
    Image.open(run / name).verify()  # a whole, valid PNG
  rows = (run / "predictions.csv").read_text().splitlines()
  assert rows[0] == "file_name,label,prediction,evaluation"
  assert len(rows) == metrics["test_images"] + 1
  modes = {str(path.relative_to(run)): stat.S_IMODE(path.stat().st_mode)
           for path in run.rglob("*") if path.is_file()}
  assert set(modes.values()) == {run_folder.file_mode()}, modes  # the umask's, not 0600
  again = trainer_runs.main_command(f"--flagfile={run / 'flags.txt'}")
  assert again.returncode == 0 and "already holds a finished run" in again.stdout


@pytest.mark.slow  # three trainer processes, one killed: about 80 s
def test_killed_run_resumes_and_matches_an_uninterrupted_one(data_dir, tmp_path):
  args = ["--model=cnn2", f"--data_dir={data_dir}", "--image_size=48", "--epochs=4",
          "--batch_size=8", "--deterministic", "--seed=2", "--early_stopping_patience=3"]
  killed = tmp_path / "killed"
  process = subprocess.Popen([sys.executable, "-m", "trainers.main", *args,
                              f"--model_dir={killed}"], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  history = killed / "history.csv"
  deadline = time.time() + 240
  while time.time() < deadline and process.poll() is None:
    if history.exists() and len(history.read_text().splitlines()) >= 3:  # 2 epochs done
      break
    time.sleep(0.02)
  os.kill(process.pid, signal.SIGKILL)
  process.wait()
  assert not (killed / "metrics.json").exists()
  resumed = trainer_runs.main_command(*args, f"--model_dir={killed}")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  straight = trainer_runs.main_command(*args, f"--model_dir={tmp_path / 'straight'}")
  assert straight.returncode == 0, straight.stderr[-2000:]
  assert (trainer_runs.without_clock(json.loads((killed / "metrics.json").read_text()))
          == trainer_runs.without_clock(
              json.loads((tmp_path / "straight" / "metrics.json").read_text())))
  assert len(history.read_text().splitlines()) == 5  # header + 4 epochs, none doubled


@pytest.mark.slow  # three trainer processes: about 45 s
def test_sigterm_says_how_to_resume_and_a_lost_config_json_guards_the_backups(data_dir,
                                                                               tmp_path):
  args = ["--model=cnn2", f"--data_dir={data_dir}", "--image_size=48", "--epochs=30",
          "--batch_size=8", "--deterministic", f"--model_dir={tmp_path / 'run'}"]
  process = subprocess.Popen([sys.executable, "-m", "trainers.main", *args], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  history = tmp_path / "run" / "history.csv"
  deadline = time.time() + 240
  while time.time() < deadline and process.poll() is None and not history.exists():
    time.sleep(0.02)
  process.send_signal(signal.SIGTERM)
  _, errors = process.communicate(timeout=120)
  assert process.returncode == -signal.SIGTERM
  assert errors.strip().splitlines()[-1] == (
      f"stopped by SIGTERM: resume with python -m trainers.main "
      f"--flagfile={tmp_path / 'run' / 'flags.txt'}")
  (tmp_path / "run" / "config.json").unlink()
  other = trainer_runs.main_command(*args[:-1], "--image_size=64",
                                    f"--model_dir={tmp_path / 'run'}")
  assert other.returncode == 1 and "Traceback" not in other.stderr
  assert "has no readable config.json and" in other.stderr.strip().splitlines()[-1]
  resumed = trainer_runs.main_command(*[arg.replace("--epochs=30", "--epochs=2") for arg in args])
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "was missing or unreadable; the run's backups match" in resumed.stdout
  assert settings_lib.load(str(tmp_path / "run")).image_size == 48


@pytest.mark.parametrize("flags,message", [
    (["--model=resnet"], "value should be one of <cnn2|cnn4|mnv2|mnv2_035|enb3|dn121|enb2s|"
                         "convnext_tiny|resnet50v2>"),
    (["--model=cnn2", "--strategy=mirrored", "--virtual_devices=2", "--batch_size=15"],
     "does not divide by the 2 replicas"),
    (["--model=cnn2", "--head_units=big"], "--head_units takes integers"),
])
def test_bad_input_on_the_command_line_gives_one_clear_line(data_dir, tmp_path, flags,
                                                           message):
  result = trainer_runs.main_command(*flags, f"--data_dir={data_dir}",
                                     f"--model_dir={tmp_path / 'bad'}")
  assert result.returncode != 0
  assert message in result.stderr
  assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_exclude_drops_the_listed_records_says_so_and_records_the_list(data_dir, tmp_path):
  from trainers.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  from trainers.data import records as records_lib  # pylint: disable=g-import-not-at-top
  builder = dataset_lib.builder("animals10_tfds/160px", str(data_dir))
  _, names = records_lib.labels_and_names(records_lib.records(builder, "train"))
  listed = tmp_path / "exclude.csv"
  listed.write_text("file_name,issue\n" + "".join(f"{name},label\n" for name in names[:2]))
  common = ["--model=cnn2", f"--data_dir={data_dir}", "--image_size=32", "--epochs=1",
            "--steps_per_epoch=1", "--batch_size=8", f"--exclude={listed}"]
  result = trainer_runs.main_command(*common, f"--model_dir={tmp_path / 'run'}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "--exclude: left out 2 train, 0 validation and 0 test records of the 2 listed" in (
      result.stdout)
  config = settings_lib.load(str(tmp_path / "run"))
  assert config.exclude == tuple(sorted(names[:2])) and len(config.exclude_sha256) == 64
  listed.write_text("cane/not-a-record.jpg\n")
  typo = trainer_runs.main_command(*common, f"--model_dir={tmp_path / 'typo'}")
  assert typo.returncode != 0 and "Traceback" not in typo.stderr
  assert "--exclude names 1 file(s) that match no record" in typo.stderr.strip().splitlines()[-1]


def test_the_flags_defaults_are_the_config_defaults(tmp_path):
  # The dataclass is the one place a default is written: a run given only --model
  # gets Config's own defaults, field by field.
  script = ("from absl import flags\n"
            "from trainers import config, main\n"
            "main.define_flags()\n"
            f"flags.FLAGS(['main', '--model=cnn2', '--model_dir={tmp_path}'])\n"
            "parsed = main.config_from_flags()\n"
            f"default = config.Config(model='cnn2', model_dir='{tmp_path}')\n"
            "import dataclasses\n"
            "print([f.name for f in dataclasses.fields(default)\n"
            "       if getattr(parsed, f.name) != getattr(default, f.name)])\n")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == "[]"
