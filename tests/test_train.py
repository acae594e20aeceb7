"""Training end to end: outputs, determinism, resume after kill -9, bad input."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from trainers.training import train
import trainer_runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def straight(data_dir, tmp_path_factory):
  """`straight(epochs)`: the metrics of an uninterrupted `_config` run, trained once."""
  done = {}

  def metrics(epochs: int) -> dict:
    if epochs not in done:
      done[epochs] = trainer_runs.without_clock(train.train_and_evaluate(
          trainer_runs.small_config(data_dir, tmp_path_factory.mktemp("straight"), epochs=epochs)))
    return done[epochs]

  return metrics


def test_the_same_config_gives_identical_metrics(data_dir, tmp_path):
  first, second = (train.train_and_evaluate(trainer_runs.small_config(
      data_dir, tmp_path / name, augment="study")) for name in ("a", "b"))
  assert trainer_runs.without_clock(first) == trainer_runs.without_clock(second)
  assert first["train_seconds"] > 0 and first["phases"]["train"]["cached_features"] is False


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
    train.train_and_evaluate(trainer_runs.small_config(data_dir, tmp_path / "bad", **overrides))
  assert not (tmp_path / "bad" / "metrics.json").exists()


@pytest.mark.slow  # 20-40 s of training or fresh processes (CI runs it)
def test_resume_from_a_cut_short_backup_uses_the_epoch_of_the_weights_restored(data_dir,
                                                                              tmp_path,
                                                                              straight):
  """latest.weights.h5 cut short (a crash mid-save): Keras restores the previous epoch's
  .bkp copy, so the data stream must resume from that epoch too."""
  run = tmp_path / "cut"
  train.train_and_evaluate(trainer_runs.small_config(data_dir, run, epochs=2))
  for name in ("metrics.json", "model.keras", "backup/train.done.weights.h5"):
    (run / name).unlink()  # as if killed in epoch 3 of 3: backups of epochs 2 and 1 remain
  weights = run / "backup" / "train" / "latest.weights.h5"
  weights.write_bytes(weights.read_bytes()[:5000])
  resumed = train.train_and_evaluate(trainer_runs.small_config(data_dir, run, epochs=3))
  assert trainer_runs.without_clock(resumed) == straight(3)
  rows = (run / "history.csv").read_text().splitlines()
  assert len(rows) == 4  # header + 3 epochs: epoch 2 ran again and replaced its row
  for name in ("latest.weights.h5", "latest.weights.h5.bkp"):
    path = run / "backup" / "train" / name
    path.write_bytes(path.read_bytes()[:5000])
  (run / "metrics.json").unlink()
  (run / "backup" / "train.done.weights.h5").unlink()
  with pytest.raises(ValueError, match="delete .* to train this phase again"):
    train.train_and_evaluate(trainer_runs.small_config(data_dir, run, epochs=3))


@pytest.mark.slow  # 20-40 s of training or fresh processes (CI runs it)
def test_weights_newer_than_their_metadata_resume_from_the_pair_that_matches(data_dir,
                                                                            tmp_path,
                                                                            straight):
  """Killed between writing an epoch's weights and its metadata: the weights file is
  whole but belongs to another epoch than the metadata says. Resuming must not pair
  them (it did, and skipped an epoch of data): the .bkp pair is used."""
  run = tmp_path / "run"
  train.train_and_evaluate(trainer_runs.small_config(data_dir, run, epochs=2))
  for name in ("metrics.json", "model.keras", "backup/train.done.weights.h5"):
    (run / name).unlink()
  backup = run / "backup" / "train"
  (backup / "latest.weights.h5").write_bytes((backup / "latest.weights.h5.bkp").read_bytes())
  resumed = train.train_and_evaluate(trainer_runs.small_config(data_dir, run, epochs=3))
  assert trainer_runs.without_clock(resumed) == straight(3)


@pytest.mark.skipif(shutil.which("unshare") is None or subprocess.run(
    ["unshare", "-rm", "true"], capture_output=True, check=False).returncode != 0,
                    reason="needs unshare -rm (a private mount namespace) for a small tmpfs")
@pytest.mark.slow  # 20-40 s of training or fresh processes (CI runs it)
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
    train.train_and_evaluate(trainer_runs.small_config(data_dir, target))


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
  result = trainer_runs.main_command("--model=cnn2", f"--data_dir={damaged_copy.parents[2]}",
                 f"--model_dir={tmp_path / 'run'}", "--image_size=32", "--epochs=1")
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: the record file {shard} is {damage}")
  assert "tfds build animals10_tfds --config=160px" in last and "--overwrite" in last


@pytest.mark.slow  # 20-40 s of training or fresh processes (CI runs it)
def test_corruption_found_mid_run_keeps_the_finished_epochs(damaged_copy, tmp_path,
                                                            monkeypatch, straight):
  """A validation file goes bad during epoch 2 (after epoch 1 read it whole): the run
  stops with the file's name, and once it is rebuilt the run resumes after epoch 1."""
  from trainers.training import callbacks as callbacks_lib  # pylint: disable=g-import-not-at-top
  from trainers.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  data_dir = damaged_copy.parents[2]  # a byte-identical copy: the same results
  shard = damaged_copy / "animals10_tfds-validation.tfrecord-00000-of-00004"
  original = shard.read_bytes()
  write_row = callbacks_lib.HistoryCsv.on_epoch_end

  def row_then_damage(self, epoch, logs=None):
    write_row(self, epoch, logs)
    shard.write_bytes(original[:len(original) // 2])

  monkeypatch.setattr(callbacks_lib.HistoryCsv, "on_epoch_end", row_then_damage)
  with pytest.raises(dataset_lib.DamagedDataError, match=f"record file {shard} is"):
    train.train_and_evaluate(trainer_runs.small_config(data_dir, tmp_path / "run", epochs=2))
  monkeypatch.setattr(callbacks_lib.HistoryCsv, "on_epoch_end", write_row)
  shard.write_bytes(original)  # as the rebuild does: same records, same splits
  resumed = train.train_and_evaluate(
      trainer_runs.small_config(data_dir, tmp_path / "run", epochs=2))
  assert trainer_runs.without_clock(resumed) == straight(2)


def test_a_run_killed_after_early_stopping_ended_it_stays_ended(data_dir, tmp_path):
  """Killed once backup/train.early_stopping.json says patience ran out, before the phase
  was marked done: the same command trains no further epoch."""
  settings = dict(epochs=8, steps_per_epoch=2, learning_rate=0.01, early_stopping_patience=1,
                  image_size=32)
  uninterrupted = train.train_and_evaluate(trainer_runs.small_config(
      data_dir, tmp_path / "uninterrupted", **settings))
  history = (tmp_path / "uninterrupted" / "history.csv").read_text().splitlines()
  assert len(history) - 1 < 8, "early stopping never ended this run: the test shows nothing"
  run = tmp_path / "killed"
  shutil.copytree(tmp_path / "uninterrupted", run)
  for name in ("metrics.json", "model.keras", "backup/train.done.weights.h5"):
    (run / name).unlink()
  config_path = run / "config.json"
  config_path.write_text(json.dumps({**json.loads(config_path.read_text()),
                                     "model_dir": str(run)}))
  from trainers.runs import settings as settings_lib
  resumed = train.train_and_evaluate(settings_lib.load(str(run)))
  assert (run / "history.csv").read_text().splitlines() == history
  assert trainer_runs.without_clock(resumed) == trainer_runs.without_clock(uninterrupted)
