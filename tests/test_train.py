"""Training end to end: outputs, determinism, resume after kill -9, bad input."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time

from PIL import Image
import pytest

from trainers import config as config_lib
from trainers import metrics as metrics_lib
from trainers import run_folder
from trainers import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", "trainers.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)


def _config(data_dir, model_dir, **overrides):
  settings = dict(model="cnn2", model_dir=str(model_dir), data_dir=str(data_dir),
                  image_size=48, batch_size=16, epochs=2, seed=1, deterministic=True,
                  weights="none")
  settings.update(overrides)
  return config_lib.Config(**settings)


@pytest.fixture(scope="module")
def straight(data_dir, tmp_path_factory):
  """`straight(epochs)`: the metrics of an uninterrupted `_config` run, trained once."""
  done = {}

  def metrics(epochs: int) -> dict:
    if epochs not in done:
      done[epochs] = metrics_lib.without_clock(train.train_and_evaluate(
          _config(data_dir, tmp_path_factory.mktemp("straight"), epochs=epochs)))
    return done[epochs]

  return metrics


def test_run_folder_has_the_study_columns_and_reruns_from_its_flagfile(data_dir, tmp_path):
  run = tmp_path / "run"
  result = _main("--model=cnn2", f"--data_dir={data_dir}", f"--model_dir={run}",
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
  assert rows[0] == "file_name,label,prediction" and len(rows) == metrics["test_images"] + 1
  modes = {str(path.relative_to(run)): stat.S_IMODE(path.stat().st_mode)
           for path in run.rglob("*") if path.is_file()}
  assert set(modes.values()) == {run_folder.FILE_MODE}, modes  # the umask's, not 0600
  again = _main(f"--flagfile={run / 'flags.txt'}")
  assert again.returncode == 0 and "already holds a finished run" in again.stdout


def test_same_flags_give_identical_metrics(data_dir, tmp_path):
  first = train.train_and_evaluate(_config(data_dir, tmp_path / "a", augment=True))
  second = train.train_and_evaluate(_config(data_dir, tmp_path / "b", augment=True))
  assert metrics_lib.without_clock(first) == metrics_lib.without_clock(second)
  assert first["train_seconds"] > 0 and first["phases"]["train"]["cached_features"] is False


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
  resumed = _main(*args, f"--model_dir={killed}")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  straight = _main(*args, f"--model_dir={tmp_path / 'straight'}")
  assert straight.returncode == 0, straight.stderr[-2000:]
  assert (metrics_lib.without_clock(json.loads((killed / "metrics.json").read_text()))
          == metrics_lib.without_clock(
              json.loads((tmp_path / "straight" / "metrics.json").read_text())))
  assert len(history.read_text().splitlines()) == 5  # header + 4 epochs, none doubled


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
  other = _main(*args[:-1], "--image_size=64", f"--model_dir={tmp_path / 'run'}")
  assert other.returncode == 1 and "Traceback" not in other.stderr
  assert "has no readable config.json and" in other.stderr.strip().splitlines()[-1]
  resumed = _main(*[arg.replace("--epochs=30", "--epochs=2") for arg in args])
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "was missing or unreadable; the run's backups match" in resumed.stdout
  assert config_lib.load(str(tmp_path / "run")).image_size == 48


@pytest.mark.parametrize("flags,message", [
    (["--model=resnet"], "value should be one of <cnn2|cnn4|mnv2|mnv2_035|enb3|dn121>"),
    (["--model=cnn2", "--strategy=mirrored", "--virtual_devices=2", "--batch_size=15"],
     "does not divide by the 2 replicas"),
    (["--model=cnn2", "--head_units=big"], "--head_units takes integers"),
])
def test_bad_input_on_the_command_line_gives_one_clear_line(data_dir, tmp_path, flags,
                                                           message):
  result = _main(*flags, f"--data_dir={data_dir}", f"--model_dir={tmp_path / 'bad'}")
  assert result.returncode != 0
  assert message in result.stderr
  assert "Traceback" not in result.stderr


@pytest.mark.parametrize("overrides,message", [
    (dict(model="mnv2", image_size=16), "below mnv2's minimum of 32 px"),
    (dict(keep_formats=("TIFF",)), "No train images left"),
    (dict(dataset="animals10_tfds/full", data_dir_override="/nonexistent"),
     "tfds build animals10_tfds"),
    (dict(model="mnv2", weights="/no/such.weights.h5"), "no such file"),
    (dict(strategy="multi_worker"), "needs the TF_CONFIG environment variable"),
    (dict(cluster_timeout=0), "--cluster_timeout must be positive"),
])
def test_bad_settings_raise_a_value_error_that_says_what_to_do(data_dir, tmp_path, monkeypatch,
                                                               overrides, message):
  monkeypatch.delenv("TF_CONFIG", raising=False)
  data_dir = overrides.pop("data_dir_override", data_dir)
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(_config(data_dir, tmp_path / "bad", **overrides))
  assert not (tmp_path / "bad" / "metrics.json").exists()


def test_resume_from_a_cut_short_backup_uses_the_epoch_of_the_weights_restored(data_dir,
                                                                              tmp_path,
                                                                              straight):
  """latest.weights.h5 cut short (a crash mid-save): Keras restores the previous epoch's
  .bkp copy, so the data stream must resume from that epoch too."""
  run = tmp_path / "cut"
  train.train_and_evaluate(_config(data_dir, run, epochs=2))
  for name in ("metrics.json", "model.keras", "backup/train.done.weights.h5"):
    (run / name).unlink()  # as if killed in epoch 3 of 3: backups of epochs 2 and 1 remain
  weights = run / "backup" / "train" / "latest.weights.h5"
  weights.write_bytes(weights.read_bytes()[:5000])
  resumed = train.train_and_evaluate(_config(data_dir, run, epochs=3))
  assert metrics_lib.without_clock(resumed) == straight(3)
  rows = (run / "history.csv").read_text().splitlines()
  assert len(rows) == 4  # header + 3 epochs: epoch 2 ran again and replaced its row
  for name in ("latest.weights.h5", "latest.weights.h5.bkp"):
    path = run / "backup" / "train" / name
    path.write_bytes(path.read_bytes()[:5000])
  (run / "metrics.json").unlink()
  (run / "backup" / "train.done.weights.h5").unlink()
  with pytest.raises(ValueError, match="delete .* to train this phase again"):
    train.train_and_evaluate(_config(data_dir, run, epochs=3))


def test_weights_newer_than_their_metadata_resume_from_the_pair_that_matches(data_dir,
                                                                            tmp_path,
                                                                            straight):
  """Killed between writing an epoch's weights and its metadata: the weights file is
  whole but belongs to another epoch than the metadata says. Resuming must not pair
  them (it did, and skipped an epoch of data): the .bkp pair is used."""
  run = tmp_path / "run"
  train.train_and_evaluate(_config(data_dir, run, epochs=2))
  for name in ("metrics.json", "model.keras", "backup/train.done.weights.h5"):
    (run / name).unlink()
  backup = run / "backup" / "train"
  (backup / "latest.weights.h5").write_bytes((backup / "latest.weights.h5.bkp").read_bytes())
  resumed = train.train_and_evaluate(_config(data_dir, run, epochs=3))
  assert metrics_lib.without_clock(resumed) == straight(3)


@pytest.mark.skipif(shutil.which("unshare") is None or subprocess.run(
    ["unshare", "-rm", "true"], capture_output=True, check=False).returncode != 0,
                    reason="needs unshare -rm (a private mount namespace) for a small tmpfs")
def test_full_disk_is_one_line_and_the_run_resumes_once_space_is_freed(data_dir, tmp_path):
  tiny = tmp_path / "tiny"
  tiny.mkdir()
  train_command = " ".join([sys.executable, "-m", "trainers.main", "--model=cnn2",
                            f"--data_dir={data_dir}", f"--model_dir={tiny / 'run'}",
                            "--image_size=48", "--epochs=2", "--batch_size=16"])
  script = textwrap.dedent(f"""
      mount -t tmpfs -o size=2m tmpfs {tiny}
      {train_command} 2> {tmp_path / 'full.err'}; echo "full=$?"
      mount -o remount,size=200m {tiny}
      {train_command} > /dev/null 2> {tmp_path / 'freed.err'}; echo "freed=$?"
      cat {tiny / 'run' / 'metrics.json'} > {tmp_path / 'metrics.json'}
      """)
  result = subprocess.run(["unshare", "-rm", "bash", "-c", script], cwd=REPO,
                          capture_output=True, text=True, timeout=600, check=False)
  errors = (tmp_path / "full.err").read_text()
  assert "full=1" in result.stdout, errors[-2000:]
  assert "Traceback" not in errors and "Segmentation" not in errors
  assert errors.strip().splitlines()[-1].startswith(
      f"error: no space left on tmpfs at {tiny} while writing {tiny / 'run'}")
  assert "freed=0" in result.stdout, (tmp_path / "freed.err").read_text()[-2000:]
  assert json.loads((tmp_path / "metrics.json").read_text())["test_images"] > 0


def test_a_second_process_on_a_run_folder_stops_with_one_line(data_dir, tmp_path):
  from trainers import run_lock  # pylint: disable=g-import-not-at-top
  holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
      import sys, time
      from trainers import run_lock
      with run_lock.hold({str(tmp_path / "run")!r}):
        print("held", flush=True)
        time.sleep(60)
      """)], cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    result = _main("--model=cnn2", f"--data_dir={data_dir}", f"--model_dir={tmp_path / 'run'}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"is in use by pid {holder.pid}" in result.stderr
  finally:
    holder.kill()  # SIGKILL: the kernel releases its lock
    holder.wait()
  with run_lock.hold(str(tmp_path / "run")):  # a dead holder's lock is taken over
    assert json.loads((tmp_path / "run" / ".lock").read_text())["pid"] == os.getpid()


def test_unreadable_metrics_json_is_an_unfinished_run_and_is_written_again(data_dir,
                                                                          tmp_path):
  first = train.train_and_evaluate(_config(data_dir, tmp_path / "run", epochs=1))
  (tmp_path / "run" / "metrics.json").write_text('{"accuracy_train": 0.5,\n "loss')
  again = train.train_and_evaluate(_config(data_dir, tmp_path / "run", epochs=1))
  assert metrics_lib.without_clock(again) == metrics_lib.without_clock(first)
  assert json.loads((tmp_path / "run" / "metrics.json").read_text())["accuracy_test"] == (
      first["accuracy_test"])


@pytest.mark.parametrize("make", ["regular_file", "under_a_file", "read_only"])
def test_unwritable_model_dir_is_one_clear_error(data_dir, tmp_path, make):
  target = tmp_path / "run"
  if make == "regular_file":
    target.write_text("not a folder")
  elif make == "under_a_file":
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" / "run"
  else:
    target.mkdir()
    target.chmod(0o500)
    if os.access(target, os.W_OK):  # root ignores permissions
      pytest.skip("running as root: a read-only folder is still writable")
  with pytest.raises(ValueError, match="cannot be written"):
    train.train_and_evaluate(_config(data_dir, target))


@pytest.fixture
def damaged_copy(data_dir, tmp_path):
  """A copy of the built dataset, to damage."""
  copy = tmp_path / "data"
  shutil.copytree(data_dir / "animals10_tfds", copy / "animals10_tfds")
  return copy / "animals10_tfds" / "160px" / "1.0.0"


@pytest.mark.parametrize("damage", ["corrupted", "missing"])
def test_damaged_record_file_is_one_line_naming_it_and_the_rebuild(damaged_copy, tmp_path,
                                                                   damage):
  shard = damaged_copy / "animals10_tfds-train.tfrecord-00001-of-00004"
  if damage == "corrupted":
    data = bytearray(shard.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    shard.write_bytes(bytes(data))
  else:
    shard.unlink()
  result = _main("--model=cnn2", f"--data_dir={damaged_copy.parents[2]}",
                 f"--model_dir={tmp_path / 'run'}", "--image_size=32", "--epochs=1")
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: the record file {shard} is {damage}")
  assert "tfds build animals10_tfds --config=160px" in last and "--overwrite" in last


def test_corruption_found_mid_run_keeps_the_finished_epochs(damaged_copy, tmp_path,
                                                            monkeypatch, straight):
  """A validation file goes bad during epoch 2 (after epoch 1 read it whole): the run
  stops with the file's name, and once it is rebuilt the run resumes after epoch 1."""
  from trainers import callbacks as callbacks_lib  # pylint: disable=g-import-not-at-top
  from trainers import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  data_dir = damaged_copy.parents[2]  # a byte-identical copy: the same results
  shard = damaged_copy / "animals10_tfds-validation.tfrecord-00000-of-00004"
  original = shard.read_bytes()
  write_row = callbacks_lib.HistoryCsv.on_epoch_end

  def row_then_damage(self, epoch, logs=None):
    write_row(self, epoch, logs)
    shard.write_bytes(original[:len(original) // 2])

  monkeypatch.setattr(callbacks_lib.HistoryCsv, "on_epoch_end", row_then_damage)
  with pytest.raises(dataset_lib.DamagedDataError, match=f"record file {shard} is"):
    train.train_and_evaluate(_config(data_dir, tmp_path / "run", epochs=2))
  monkeypatch.setattr(callbacks_lib.HistoryCsv, "on_epoch_end", write_row)
  shard.write_bytes(original)  # as the rebuild does: same records, same splits
  resumed = train.train_and_evaluate(_config(data_dir, tmp_path / "run", epochs=2))
  assert metrics_lib.without_clock(resumed) == straight(2)
