"""Config: every bad combination is one sentence; config.json gives the same Config back."""


import pytest

from trainers import config as config_lib
from trainers.runs import settings as settings_lib


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


def test_mix_alphas_past_the_cap_are_refused():
  with pytest.raises(ValueError, match=r"--mixup must be in \[0, 100"):
    config_lib.Config(model="cnn2", model_dir="unused", mixup=1e300)


def test_an_exclude_file_is_a_file_name_column_or_a_plain_list(tmp_path):
  audit = tmp_path / "audit.csv"
  audit.write_text("file_name,split,label,issue\ncane/b.jpg,train,dog,label\n"
                   "cane/a.jpg,test,dog,outlier\ncane/b.jpg,train,dog,near_duplicate\n")
  plain = tmp_path / "list.txt"
  plain.write_text("# mine\ncane/a.jpg\n\ncane/b.jpg\n")
  names, digest = config_lib.read_exclude(str(audit))
  assert names == ("cane/a.jpg", "cane/b.jpg") and len(digest) == 64
  assert config_lib.read_exclude(str(plain)) == (names, digest)
  (tmp_path / "empty.csv").write_text("file_name\n")
  with pytest.raises(ValueError, match="names no file"):
    config_lib.read_exclude(str(tmp_path / "empty.csv"))
  with pytest.raises(ValueError, match="cannot be read"):
    config_lib.read_exclude(str(tmp_path / "missing.csv"))
  with pytest.raises(ValueError, match="--exclude_test needs --exclude"):
    config_lib.Config(model="cnn2", model_dir=str(tmp_path), exclude_test=True)
  # A run without --exclude keeps the settings hash older versions gave it.
  plain_config = config_lib.Config(model="cnn2", model_dir=str(tmp_path))
  listed = config_lib.Config(model="cnn2", model_dir=str(tmp_path), exclude=names,
                             exclude_sha256=digest)
  assert settings_lib.settings_sha256(plain_config) != settings_lib.settings_sha256(listed)
