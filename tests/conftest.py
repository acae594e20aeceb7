"""Shared fixtures: a small generated sample, built once per test session."""

import os
import subprocess
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_addoption(parser):
  parser.addoption("--slow", action="store_true",
                   help="also run the tests marked slow (about 5 more minutes)")


def pytest_collection_modifyitems(config, items):
  """Tests marked slow (minutes of model building and tracing) run with --slow only,
  so the default suite (what CI runs) stays at about 3 minutes on 2 cores."""
  if config.getoption("--slow"):
    return
  skip = pytest.mark.skip(reason="slow: runs with --slow")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory):
  """A generated raw-img tree: 40 images per class."""
  from tools import make_sample  # pylint: disable=g-import-not-at-top
  out = tmp_path_factory.mktemp("sample")
  make_sample.make_sample(str(out), make_sample.counts_for(40, False), seed=1)
  return out


@pytest.fixture(scope="session")
def data_dir(sample_dir, tmp_path_factory):
  """The sample built with the real `tfds build` CLI, every config; 4 files per
  split, so multi-worker tests can shard by file."""
  data = tmp_path_factory.mktemp("tensorflow_datasets")
  subprocess.run(
      [os.path.join(os.path.dirname(sys.executable), "tfds"), "build",
       "animals10_tfds", f"--manual_dir={sample_dir}", f"--data_dir={data}",
       "--num_shards=4"],
      cwd=REPO, check=True, capture_output=True)
  return data
