"""Config: every bad combination is one sentence; config.json gives the same Config back."""

import dataclasses
import json
import os

import pytest

from trainers import config as config_lib


@pytest.mark.parametrize("overrides, message", [
    (dict(resize="squash"), "--resize=squash is not one of crop, stretch"),
    (dict(balance="oversample"), "--balance=oversample is not one of none, undersample"),
    (dict(strategy="horovod"), "--strategy=horovod is not one of auto"),
    (dict(batch_size=0), "--batch_size must be at least 1, got 0"),
    (dict(image_size=-1), "--image_size must be at least 1"),
    (dict(learning_rate=0.0), "--learning_rate must be a positive number, got 0.0"),
    (dict(learning_rate=float("nan")), "--learning_rate must be a positive number, got nan"),
    (dict(fine_tune_learning_rate=-1e-5), "--fine_tune_learning_rate must be a positive"),
    (dict(steps_per_epoch=-5), "--steps_per_epoch must be 0 .one pass. or positive, got -5"),
    (dict(image_size=4000), "--image_size=4000 is above 1024: one batch would need tens of GB"),
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
  (tmp_path / "config.json").write_text(json.dumps(dict(values, random_erasing=0.25)))
  with pytest.raises(ValueError, match=r"settings this version does not know \(random_erasing\)"):
    config_lib.load(str(tmp_path))
  (tmp_path / "config.json").write_text('{"model": "cnn2",')
  with pytest.raises(ValueError, match="config.json is unreadable .*--flagfile="):
    config_lib.load(str(tmp_path))


def _backup(config, settings=None):
  """A backup pair's metadata as `callbacks.Backup` writes it (settings: its hash)."""
  folder = config_lib.run_paths.RunPaths(config.model_dir).backup("train")
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "training_metadata.json"), "w") as file:
    json.dump({"epoch": 0, "settings_sha256": settings or config_lib.settings_sha256(config)},
              file)


def test_resuming_may_change_where_and_how_long_but_nothing_else(tmp_path):
  first = config_lib.Config(model="cnn2", model_dir=str(tmp_path), epochs=5)
  config_lib.save(first)
  _backup(first)
  config_lib.check_resumable(dataclasses.replace(first, epochs=8, data_dir="/elsewhere",
                                                 strategy="mirrored", virtual_devices=2))
  with pytest.raises(ValueError, match=r"other settings \(--learning_rate=0.001 before, "
                                       r"0.01 now\)"):
    config_lib.check_resumable(dataclasses.replace(first, learning_rate=0.01))


def test_a_run_that_failed_before_its_first_epoch_takes_the_corrected_settings(tmp_path, capsys):
  failed = config_lib.Config(model="mnv2", model_dir=str(tmp_path), weights="typo.h5")
  config_lib.save(failed)  # what a run that stopped on a bad --weights leaves
  config_lib.check_resumable(dataclasses.replace(failed, weights="none"))
  assert "holds no finished epoch of its earlier settings" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["delete", "garbage", "cut"])
def test_without_a_readable_config_json_the_backups_settings_decide(tmp_path, damage):
  trained = config_lib.Config(model="mnv2", model_dir=str(tmp_path), image_size=48)
  config_lib.save(trained)
  _backup(trained)
  path = tmp_path / "config.json"
  if damage == "delete":
    path.unlink()
  else:
    path.write_text("garbage" if damage == "garbage" else path.read_text()[:40])
  with pytest.raises(ValueError, match=r"has no readable config.json and .*training_metadata"
                                       r".json was made with other settings"):
    config_lib.check_resumable(dataclasses.replace(trained, image_size=64))
  config_lib.check_resumable(dataclasses.replace(trained, epochs=20))  # same settings: resumes


def test_backups_of_an_older_version_without_a_hash_are_not_trusted(tmp_path):
  trained = config_lib.Config(model="cnn2", model_dir=str(tmp_path))
  _backup(trained)
  metadata = next(tmp_path.rglob("training_metadata.json"))
  metadata.write_text('{"epoch": 0}')
  with pytest.raises(ValueError, match="was made with other settings .or by an older version"):
    config_lib.check_resumable(trained)


def test_a_finished_run_gets_its_damaged_config_json_back_only_from_its_own_settings(tmp_path):
  trained = config_lib.Config(model="cnn2", model_dir=str(tmp_path), epochs=3)
  metrics = {"accuracy_test": 0.5, "settings_sha256": config_lib.settings_sha256(trained)}
  (tmp_path / "config.json").write_text("{")
  with pytest.raises(ValueError, match=r"config.json is missing or unreadable, and this "
                                       r"command's settings are not those"):
    config_lib.check_finished(dataclasses.replace(trained, seed=4), metrics)
  config_lib.check_finished(trained, metrics)
  assert config_lib.load(str(tmp_path)) == trained


def test_a_finished_run_refuses_a_command_of_other_settings(tmp_path):
  trained = config_lib.Config(model="cnn2", model_dir=str(tmp_path), epochs=3)
  config_lib.save(trained)
  metrics = {"accuracy_test": 0.5, "settings_sha256": config_lib.settings_sha256(trained)}
  with pytest.raises(ValueError, match=r"holds a finished run with other settings "
                                       r"\(--batch_size=24 before, 8 now\)"):
    config_lib.check_finished(dataclasses.replace(trained, batch_size=8), metrics)


def test_a_finished_run_of_an_older_version_without_its_config_json_says_what_to_do(tmp_path):
  trained = config_lib.Config(model="cnn2", model_dir=str(tmp_path))
  with pytest.raises(ValueError, match=r"records no settings to check this command against: "
                                       r"put back a copy of config.json"):
    config_lib.check_finished(trained, {"accuracy_test": 0.5})


ODD_NAMES = ["cane/plain.jpg", "cane/two\nlines.jpg", "cane/nel\x85.jpg", "cane/ls\u2028.jpg",
             " cane/leading.jpg", "cane/trailing.jpg ", "cane/comma,quote\".jpg"]


@pytest.mark.parametrize("encoding, line_end", [("utf-8", "\n"), ("utf-8-sig", "\r\n"),
                                                ("utf-8-sig", "\n")])
def test_an_audit_csv_round_trips_every_name_exactly(tmp_path, encoding, line_end):
  """Written as audit.csv or as Excel's "CSV UTF-8" (byte-order mark, CRLF)."""
  import csv  # pylint: disable=g-import-not-at-top
  path = tmp_path / "audit.csv"
  with open(path, "w", newline="", encoding=encoding) as file:
    writer = csv.writer(file, lineterminator=line_end)
    writer.writerow(["file_name", "split", "issue"])
    writer.writerows([name, "train", "label"] for name in ODD_NAMES)
  names, _ = config_lib.read_exclude(str(path))
  assert names == tuple(sorted(ODD_NAMES))


def test_a_plain_list_keeps_names_as_written_less_crlf(tmp_path):
  path = tmp_path / "list.txt"
  path.write_bytes("\ufeff# comment\r\ncane/a.jpg\r\n\r\ncane/b c.jpg \r\n".encode())
  assert config_lib.read_exclude(str(path))[0] == ("cane/a.jpg", "cane/b c.jpg ")


def test_a_semicolon_csv_names_its_delimiter(tmp_path):
  path = tmp_path / "audit.csv"
  path.write_text("file_name;split\ncane/a.jpg;train\n")
  with pytest.raises(ValueError, match="is a CSV separated by ';'.*save it with commas"):
    config_lib.read_exclude(str(path))


def test_a_changed_exclude_list_is_summed_up_not_printed_whole(tmp_path):
  names = tuple(f"cane/{index:05d}.jpg" for index in range(2000))
  before = config_lib.Config(model="cnn2", model_dir=str(tmp_path), exclude=names,
                             exclude_sha256="a")
  config_lib.save(before)
  (tmp_path / "backup").mkdir()
  (tmp_path / "backup" / "train.clock.json").write_text(json.dumps({"settings_sha256": "x"}))
  now = dataclasses.replace(before, exclude=names[1:] + ("cane/new.jpg",), exclude_sha256="b")
  with pytest.raises(ValueError) as raised:
    config_lib.check_resumable(now)
  message = str(raised.value)
  assert len(message) < 600, message
  assert "1 name(s) more and 1 fewer than the 2000" in message
  assert "+'cane/new.jpg'" in message and "the --exclude file as it was" in message


def test_a_finished_run_rerun_with_another_length_is_refused(tmp_path):
  config = config_lib.Config(model="cnn2", model_dir=str(tmp_path), epochs=2)
  config_lib.save(config)
  metrics = {config_lib.SETTINGS_KEY: config_lib.settings_sha256(config)}
  config_lib.check_finished(config, metrics)  # the same command: fine
  for change in (dict(epochs=3), dict(early_stopping_patience=2)):
    with pytest.raises(ValueError, match="holds a finished run with other settings "
                                         r"\(--\w+=\d+ before, \d+ now\)"):
      config_lib.check_finished(dataclasses.replace(config, **change), metrics)


def test_mix_alphas_past_the_cap_are_refused():
  with pytest.raises(ValueError, match=r"--mixup must be in \[0, 100"):
    config_lib.Config(model="cnn2", model_dir="unused", mixup=1e300)
