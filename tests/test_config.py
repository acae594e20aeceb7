"""Config: every bad combination is one sentence; config.json gives the same Config back."""

import dataclasses
import json

import pytest

from trainers import config as config_lib


@pytest.mark.parametrize("overrides, message", [
    (dict(resize="squash"), "--resize=squash is not one of crop, stretch"),
    (dict(balance="oversample"), "--balance=oversample is not one of none, undersample"),
    (dict(strategy="horovod"), "--strategy=horovod is not one of auto"),
    (dict(batch_size=0), "--batch_size must be at least 1, got 0"),
    (dict(image_size=-1), "--image_size must be at least 1"),
    (dict(learning_rate=0.0), "Learning rates must be positive"),
    (dict(fine_tune=True, fine_tune_layers=0), "--fine_tune needs --fine_tune_epochs and"),
    (dict(head_units=(128, 0)), "--head_units must be positive"),
    (dict(cluster_timeout=-5), "--cluster_timeout must be positive"),
    (dict(strategy="tpu"), "--strategy=tpu needs --tpu=NAME_OR_ADDRESS"),
])
def test_bad_settings_are_one_sentence(overrides, message):
  with pytest.raises(ValueError, match=message):
    config_lib.Config(model="cnn2", model_dir="run", **overrides)


def test_config_json_round_trips_with_tuples(tmp_path):
  config = config_lib.Config(model="mnv2", model_dir=str(tmp_path), head_units=(256, 64),
                             keep_formats=("JPEG",), fine_tune=True, seed=3)
  config_lib.save(config)
  assert json.loads((tmp_path / "config.json").read_text())["head_units"] == [256, 64]
  assert config_lib.load(str(tmp_path)) == config


def test_a_moved_run_folder_loads_with_its_new_path(tmp_path):
  config_lib.save(config_lib.Config(model="cnn2", model_dir=str(tmp_path / "old")))
  (tmp_path / "old").rename(tmp_path / "new")
  assert config_lib.load(str(tmp_path / "new")).model_dir == str(tmp_path / "new")


def test_config_json_of_another_version_or_cut_short_is_one_line(tmp_path):
  config_lib.save(config_lib.Config(model="cnn2", model_dir=str(tmp_path)))
  values = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps(dict(values, mixup=0.2)))
  with pytest.raises(ValueError, match=r"settings this version does not know \(mixup\)"):
    config_lib.load(str(tmp_path))
  (tmp_path / "config.json").write_text('{"model": "cnn2",')
  with pytest.raises(ValueError, match="config.json is unreadable .*--flagfile="):
    config_lib.load(str(tmp_path))


def test_resuming_may_change_where_and_how_long_but_nothing_else(tmp_path):
  first = config_lib.Config(model="cnn2", model_dir=str(tmp_path), epochs=5)
  config_lib.save(first)
  config_lib.check_resumable(dataclasses.replace(first, epochs=8, data_dir="/elsewhere",
                                                 strategy="mirrored", virtual_devices=2))
  with pytest.raises(ValueError, match=r"other settings \(--learning_rate=0.001 before, "
                                       r"0.01 now\)"):
    config_lib.check_resumable(dataclasses.replace(first, learning_rate=0.01))
