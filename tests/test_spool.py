"""The build's spool: bytes read back by offset, and no file left behind, ever."""

import os

from animals10_tfds import spool as spool_lib


def test_bytes_come_back_by_offset_from_a_file_without_a_name(tmp_path):
  spool = spool_lib.Spool(str(tmp_path))
  first, second = spool.append(b"first image"), spool.append(b"\xff\xd8 second")
  assert spool.read(second) == b"\xff\xd8 second" and spool.read(first) == b"first image"
  if os.name != "nt":  # unlinked at once: a kill -9 cannot leave it behind
    assert spool.path is None and os.listdir(tmp_path) == []
  spool.expect_readers(2)
  spool.release()
  assert spool.read(first) == b"first image"  # one reader left
  spool.release()
  assert os.listdir(tmp_path) == []
