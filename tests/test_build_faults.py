"""`tfds build` under faults: killed mid-scan, too few images, two builds at once."""

import os
import signal
import subprocess
import sys
import time

import processes
import pytest
import tensorflow_datasets as tfds

import animals10_tfds  # pylint: disable=unused-import
from animals10_tfds import build_folder
from animals10_tfds import source

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFDS = os.path.join(os.path.dirname(sys.executable), "tfds")


def _build(manual, data, env, **popen):
  return subprocess.Popen([TFDS, "build", "animals10_tfds", "--config=160px",
                           f"--manual_dir={manual}", f"--data_dir={data}"],
                          cwd=REPO, env=env, **popen)


@pytest.mark.slow  # two builds, one killed: about 30 s
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_build_killed_during_the_scan_leaves_nothing_after_a_rebuild(tmp_path):
  from tools import make_sample  # pylint: disable=g-import-not-at-top
  manual, data, spare = tmp_path / "manual", tmp_path / "data", tmp_path / "tmp"
  spare.mkdir()
  make_sample.make_sample(str(manual), make_sample.counts_for(12, False), seed=3)
  env = dict(os.environ, TMPDIR=str(spare))
  build = _build(manual, data, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  workers, deadline = [], time.time() + 120
  while len(workers) < 2 and build.poll() is None and time.time() < deadline:
    workers = processes.pool_workers(build.pid)
    time.sleep(0.02)
  os.kill(build.pid, signal.SIGKILL)  # as `kill -9` mid-scan
  build.wait()
  assert len(workers) >= 2, "the build ended before its scan workers were seen"
  assert not processes.still_running(workers, seconds=20), "orphaned scan workers"
  assert not any(name.startswith("animals10-spool") for name in os.listdir(spare))
  config_dir = data / "animals10_tfds" / "160px"
  left = [path.name for path in config_dir.iterdir()]
  assert any(name.startswith("incomplete.") for name in left), left  # what the kill left

  rebuilt = _build(manual, data, env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                   text=True)
  _, errors = rebuilt.communicate(timeout=300)
  assert rebuilt.returncode == 0, errors[-2000:]
  assert [path.name for path in config_dir.iterdir()] == ["1.0.0"]
  assert not any(name.startswith("animals10-spool") for name in os.listdir(spare))


def test_too_few_images_for_every_split_say_what_to_do(tmp_path):
  from tools import make_sample  # pylint: disable=g-import-not-at-top
  manual = tmp_path / "manual"
  make_sample.make_sample(str(manual), dict.fromkeys(source.FOLDERS, 0) | {"cane": 2}, seed=3)
  builder = tfds.builder("animals10_tfds/160px", data_dir=str(tmp_path / "data"))
  with pytest.raises(ValueError, match=r"^Add images to .*raw-img and build again: its 2 "
                                       r"usable distinct image\(s\) leave the .* empty"):
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  assert os.listdir(tmp_path / "data" / "animals10_tfds" / "160px") == []


def test_a_second_build_of_the_same_config_refuses_in_one_line(tmp_path):
  with build_folder.lock(tmp_path, "160px"):
    with pytest.raises(ValueError, match=r"^Wait for the other build of "
                                           r"animals10_tfds/160px into .* to finish"):
      with build_folder.lock(tmp_path, "160px"):
        pass
  with build_folder.lock(tmp_path, "160px"):  # free again once the first ends
    pass


def test_a_refused_manual_dir_ends_tfds_output_with_what_to_do(tmp_path):
  """TFDS's CLI prints a traceback our builder cannot suppress: its last line is ours."""
  (tmp_path / "raw-img" / "cane").mkdir(parents=True)
  (tmp_path / "raw-img" / "lupo").mkdir()
  (tmp_path / "raw-img" / "lupo" / "a.jpg").write_bytes(b"x")
  result = _build(tmp_path, tmp_path / "data", dict(os.environ), stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE, text=True)
  _, errors = result.communicate(timeout=300)
  assert result.returncode != 0
  last = errors.strip().splitlines()[-1]
  assert last.startswith(f"ValueError: Move 'lupo' out of {tmp_path / 'raw-img'} and build "
                         "again"), last


def _download_and_prepare(manual, data):
  builder = tfds.builder("animals10_tfds/160px", data_dir=str(data))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  return builder


@pytest.mark.parametrize("how", ["empty_folder", "missing_folder", "zero_byte_files"])
def test_a_class_with_no_usable_image_is_refused_naming_it(tmp_path, how):
  from tools import make_sample  # pylint: disable=g-import-not-at-top
  manual = tmp_path / "manual"
  make_sample.make_sample(str(manual), make_sample.counts_for(8, False), seed=3)
  dogs = manual / "raw-img" / "cane"
  for path in dogs.iterdir():
    if how == "zero_byte_files":
      path.write_bytes(b"")
    else:
      path.unlink()
  if how == "missing_folder":
    dogs.rmdir()
  with pytest.raises(ValueError, match=r"^Add images to cane in .*raw-img and build again: "
                                       r"that class folder has no usable image"):
    _download_and_prepare(manual, tmp_path / "data")
  assert os.listdir(tmp_path / "data" / "animals10_tfds" / "160px") == []


def test_a_file_name_that_is_not_utf8_is_skipped_and_listed_escaped(tmp_path):
  from tools import make_sample  # pylint: disable=g-import-not-at-top
  manual = tmp_path / "manual"
  make_sample.make_sample(str(manual), make_sample.counts_for(8, False), seed=3)
  cats = manual / "raw-img" / "gatto"
  first = sorted(cats.iterdir())[0]
  odd = os.path.join(os.fsencode(cats), b"caf\xe9.jpg")  # Latin-1, as an old camera names it
  with open(odd, "wb") as file:
    file.write(first.read_bytes())
  builder = _download_and_prepare(manual, tmp_path / "data")
  assert {"path": "gatto/caf\\xe9.jpg", "reason": "file name is not valid UTF-8: rename the "
          "file"} in builder.info.metadata["skipped"]
  assert sum(split.num_examples for split in builder.info.splits.values()) == 80
