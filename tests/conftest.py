"""Shared fixtures: a small generated sample, built once per test session."""

import os
import subprocess
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Test data beside the project in its workplace (never copied into it): a
# user's clone has no ../shared, and the tests that need it skip there.
SHARED = os.path.join(os.path.dirname(REPO), "shared")
REAL = os.path.join(SHARED, "data", "real-photos")
WEIGHTS_035 = os.path.join(
    SHARED, "weights", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5")
# The study's own backbone: MobileNetV2 at width 1.0 (see ../shared/weights/README.md).
WEIGHTS_100 = os.path.join(
    SHARED, "weights", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5")
needs_study_weights = pytest.mark.skipif(
    not os.path.exists(WEIGHTS_100),
    reason=f"no ImageNet weights at {WEIGHTS_100} (only the project's workplace has ../shared)")
needs_real_photos = pytest.mark.skipif(
    not os.path.isdir(os.path.join(REAL, "raw-img")),
    reason=f"no real photos at {REAL} (only the project's workplace has ../shared)")
needs_imagenet_weights = pytest.mark.skipif(
    not os.path.exists(WEIGHTS_035),
    reason=f"no ImageNet weights at {WEIGHTS_035} (only the project's workplace has ../shared)")


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


@pytest.fixture(autouse=True)
def float32_policy_after_each_test():
  """A run sets Keras's global precision policy for its process; the next test in the
  same process starts from float32 again, whatever the last one ran under."""
  yield
  import keras  # pylint: disable=g-import-not-at-top
  keras.mixed_precision.set_global_policy("float32")


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


@pytest.fixture(scope="session")
def images(sample_dir, tmp_path_factory):
  """A sample photo as JPEG, CMYK JPEG and RGBA PNG, and a text file named .jpg."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  folder = tmp_path_factory.mktemp("images")
  dog = sorted((sample_dir / "raw-img" / "cane").iterdir())[0]
  picture = Image.open(dog).convert("RGB")
  (folder / "dog.jpg").write_bytes(dog.read_bytes())
  picture.convert("CMYK").save(folder / "cmyk.jpg")
  picture.convert("RGBA").save(folder / "rgba.png")
  (folder / "notes.jpg").write_text("not an image")
  return folder


@pytest.fixture(scope="session")
def run_dir(data_dir, tmp_path_factory):
  """A finished cnn2 run (40 px, stretch, 3 steps) on the sample."""
  from trainers import config as config_lib  # pylint: disable=g-import-not-at-top
  from trainers.training import train  # pylint: disable=g-import-not-at-top
  folder = tmp_path_factory.mktemp("run") / "cnn2"
  train.train_and_evaluate(config_lib.Config(
      model="cnn2", model_dir=str(folder), data_dir=str(data_dir), image_size=40,
      resize="stretch", batch_size=16, epochs=1, steps_per_epoch=3, weights="none",
      precision="float32"))
  return folder


@pytest.fixture(scope="session")
def real_data_dir(tmp_path_factory):
  """../shared/data/real-photos built with the real `tfds build` CLI, every config."""
  data = tmp_path_factory.mktemp("real_tensorflow_datasets")
  subprocess.run([os.path.join(os.path.dirname(sys.executable), "tfds"), "build",
                  "animals10_tfds", f"--manual_dir={REAL}", f"--data_dir={data}"],
                 cwd=REPO, check=True, capture_output=True)
  return data
