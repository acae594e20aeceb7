"""Run-folder writes: whole files or nothing, the umask's modes, a full disk in one line."""

import errno
import os
import stat

import pytest

from trainers.runs import run_folder


def test_atomic_write_replaces_the_whole_file_with_the_umask_s_mode(tmp_path):
  path = str(tmp_path / "metrics.json")
  run_folder.write_json(path, {"a": 1})
  run_folder.write_json(path, {"b": 2})
  assert open(path).read().strip().startswith('{\n  "b": 2')
  assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
  umask = os.umask(0)
  os.umask(umask)
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
  path = tmp_path / "latest.weights.h5"
  path.write_bytes(b"epoch 1")

  def disk_fills_up(temporary):
    with open(temporary, "wb") as file:
      file.write(b"half of epoch 2")
    raise OSError(errno.ENOSPC, "No space left on device")

  with pytest.raises(run_folder.NoSpaceLeft, match=r"^no space left on .* while writing "
                                                   rf"{path}: free some space"):
    run_folder.replace_with(str(path), disk_fills_up, suffix=".weights.h5")
  assert path.read_bytes() == b"epoch 1"
  assert [p.name for p in tmp_path.iterdir()] == ["latest.weights.h5"]


def test_too_little_free_space_is_refused_before_writing(tmp_path):
  def never(_):
    raise AssertionError("nothing may be written")

  with pytest.raises(run_folder.NoSpaceLeft):
    run_folder.replace_with(str(tmp_path / "big.h5"), never, expected_bytes=1 << 60)
  assert list(tmp_path.iterdir()) == []


def test_the_device_is_named_by_its_mount_point(tmp_path):
  if not os.path.exists("/proc/mounts"):
    pytest.skip("reads /proc/mounts")
  assert " at /" in run_folder.device_of(str(tmp_path / "file"))


def test_a_json_output_is_free_or_ours_only_when_absent_or_holding_the_key(tmp_path):
  path = tmp_path / "figures.json"
  assert run_folder.free_or_ours(str(path), "machine")
  path.write_text('{"machine": {}, "pipeline": 1}')
  assert run_folder.free_or_ours(str(path), "machine")
  for foreign in ('{"mine": 1}', "[1, 2]", "not json"):
    path.write_text(foreign)
    assert not run_folder.free_or_ours(str(path), "machine")
