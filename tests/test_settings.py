"""A run folder's settings file: it round-trips, and a resume or rerun of other settings is refused."""

import dataclasses
import json
import os

import pytest

from trainers import config as config_lib
from trainers.runs import run_paths
from trainers.runs import settings as settings_lib
from trainers.training import train


def test_config_json_round_trips_with_tuples(tmp_path):
  config = config_lib.Config(model="mnv2", model_dir=str(tmp_path), head_units=(256, 64),
                             keep_formats=("JPEG",), fine_tune=True, seed=3)
  settings_lib.save(config)
  assert json.loads((tmp_path / "config.json").read_text())["head_units"] == [256, 64]
  assert settings_lib.load(str(tmp_path)) == config


def test_a_moved_run_folder_loads_with_its_new_path(tmp_path):
  settings_lib.save(config_lib.Config(model="cnn2", model_dir=str(tmp_path / "old")))
  (tmp_path / "old").rename(tmp_path / "new")
  assert settings_lib.load(str(tmp_path / "new")).model_dir == str(tmp_path / "new")


def test_config_json_of_another_version_or_cut_short_is_one_line(tmp_path):
  settings_lib.save(config_lib.Config(model="cnn2", model_dir=str(tmp_path)))
  values = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps(dict(values, random_erasing=0.25)))
  with pytest.raises(ValueError, match=r"settings this version does not know \(random_erasing\)"):
    settings_lib.load(str(tmp_path))
  (tmp_path / "config.json").write_text('{"model": "cnn2",')
  with pytest.raises(ValueError, match="config.json is unreadable .*--flagfile="):
    settings_lib.load(str(tmp_path))


def _backup(config, settings=None):
  """A backup pair's metadata as `backups.Backup` writes it (settings: its hash)."""
  folder = run_paths.RunPaths(config.model_dir).backup("train")
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "training_metadata.json"), "w") as file:
    json.dump({"epoch": 0, "settings_sha256": settings or settings_lib.settings_sha256(config)},
              file)


def test_resuming_may_change_where_and_how_long_but_nothing_else(tmp_path):
  first = config_lib.Config(model="cnn2", model_dir=str(tmp_path), epochs=5)
  settings_lib.save(first)
  _backup(first)
  settings_lib.check_resumable(dataclasses.replace(first, epochs=8, data_dir="/elsewhere",
                                                 strategy="mirrored", virtual_devices=2))
  with pytest.raises(ValueError, match=r"other settings \(--learning_rate=0.001 before, "
                                       r"0.01 now\)"):
    settings_lib.check_resumable(dataclasses.replace(first, learning_rate=0.01))


def test_a_run_that_failed_before_its_first_epoch_takes_the_corrected_settings(tmp_path, capsys):
  failed = config_lib.Config(model="mnv2", model_dir=str(tmp_path), weights="typo.h5")
  settings_lib.save(failed)  # what a run that stopped on a bad --weights leaves
  settings_lib.check_resumable(dataclasses.replace(failed, weights="none"))
  assert "holds no finished epoch of its earlier settings" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["delete", "garbage", "cut"])
def test_without_a_readable_config_json_the_backups_settings_decide(tmp_path, damage):
  trained = config_lib.Config(model="mnv2", model_dir=str(tmp_path), image_size=48)
  settings_lib.save(trained)
  _backup(trained)
  path = tmp_path / "config.json"
  if damage == "delete":
    path.unlink()
  else:
    path.write_text("garbage" if damage == "garbage" else path.read_text()[:40])
  with pytest.raises(ValueError, match=r"has no readable config.json and .*training_metadata"
                                       r".json was made with other settings"):
    settings_lib.check_resumable(dataclasses.replace(trained, image_size=64))
  settings_lib.check_resumable(dataclasses.replace(trained, epochs=20))  # same settings: resumes


def test_backups_of_an_older_version_without_a_hash_are_not_trusted(tmp_path):
  trained = config_lib.Config(model="cnn2", model_dir=str(tmp_path))
  _backup(trained)
  metadata = next(tmp_path.rglob("training_metadata.json"))
  metadata.write_text('{"epoch": 0}')
  with pytest.raises(ValueError, match="was made with other settings .or by an older version"):
    settings_lib.check_resumable(trained)


def test_a_finished_run_gets_its_damaged_config_json_back_only_from_its_own_settings(tmp_path):
  trained = config_lib.Config(model="cnn2", model_dir=str(tmp_path), epochs=3)
  metrics = {"accuracy_test": 0.5, "settings_sha256": settings_lib.settings_sha256(trained)}
  (tmp_path / "config.json").write_text("{")
  with pytest.raises(ValueError, match=r"config.json is missing or unreadable, and this "
                                       r"command's settings are not those"):
    settings_lib.check_finished(dataclasses.replace(trained, seed=4), metrics)
  settings_lib.check_finished(trained, metrics)
  assert settings_lib.load(str(tmp_path)) == trained


def test_a_finished_run_refuses_a_command_of_other_settings(tmp_path):
  trained = config_lib.Config(model="cnn2", model_dir=str(tmp_path), epochs=3)
  settings_lib.save(trained)
  metrics = {"accuracy_test": 0.5, "settings_sha256": settings_lib.settings_sha256(trained)}
  with pytest.raises(ValueError, match=r"holds a finished run with other settings "
                                       r"\(--batch_size=24 before, 8 now\)"):
    settings_lib.check_finished(dataclasses.replace(trained, batch_size=8), metrics)


def test_a_finished_run_of_an_older_version_without_its_config_json_says_what_to_do(tmp_path):
  trained = config_lib.Config(model="cnn2", model_dir=str(tmp_path))
  with pytest.raises(ValueError, match=r"records no settings to check this command against: "
                                       r"put back a copy of config.json"):
    settings_lib.check_finished(trained, {"accuracy_test": 0.5})


def test_a_changed_exclude_list_is_summed_up_not_printed_whole(tmp_path):
  names = tuple(f"cane/{index:05d}.jpg" for index in range(2000))
  before = config_lib.Config(model="cnn2", model_dir=str(tmp_path), exclude=names,
                             exclude_sha256="a")
  settings_lib.save(before)
  (tmp_path / "backup").mkdir()
  (tmp_path / "backup" / "train.clock.json").write_text(json.dumps({"settings_sha256": "x"}))
  now = dataclasses.replace(before, exclude=names[1:] + ("cane/new.jpg",), exclude_sha256="b")
  with pytest.raises(ValueError) as raised:
    settings_lib.check_resumable(now)
  message = str(raised.value)
  assert len(message) < 600, message
  assert "1 name(s) more and 1 fewer than the 2000" in message
  assert "+'cane/new.jpg'" in message and "the --exclude file as it was" in message


def test_a_finished_run_rerun_with_another_length_is_refused(tmp_path):
  config = config_lib.Config(model="cnn2", model_dir=str(tmp_path), epochs=2)
  settings_lib.save(config)
  metrics = {settings_lib.SETTINGS_KEY: settings_lib.settings_sha256(config)}
  settings_lib.check_finished(config, metrics)  # the same command: fine
  for change in (dict(epochs=3), dict(early_stopping_patience=2)):
    with pytest.raises(ValueError, match="holds a finished run with other settings "
                                         r"\(--\w+=\d+ before, \d+ now\)"):
      settings_lib.check_finished(dataclasses.replace(config, **change), metrics)


def test_config_json_gives_back_the_config_trained_with(run_dir, data_dir):
  config = settings_lib.load(str(run_dir))
  assert config == config_lib.Config(
      model="cnn2", model_dir=str(run_dir), data_dir=str(data_dir), image_size=40,
      resize="stretch", batch_size=16, epochs=1, steps_per_epoch=3, weights="none",
      precision="float32")
  assert isinstance(config.head_units, tuple)


def test_resuming_with_other_settings_is_refused(run_dir, data_dir):
  (run_dir / "metrics.json").rename(run_dir / "metrics.moved")
  try:
    with pytest.raises(ValueError, match=r"holds a run with other settings \(--image_size=40 "
                                         r"before, 48 now\): use a new --model_dir"):
      train.train_and_evaluate(config_lib.Config(
          model="cnn2", model_dir=str(run_dir), data_dir=str(data_dir), image_size=48,
          resize="stretch", batch_size=16, epochs=1, steps_per_epoch=3, weights="none",
          precision="float32"))
  finally:
    (run_dir / "metrics.moved").rename(run_dir / "metrics.json")
