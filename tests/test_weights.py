"""--weights: every bad file is one line naming it; ImageNet weights from Keras's cache."""

import os
import shutil
import subprocess
import sys
import urllib.error

import keras
import numpy as np
import pytest

from trainers import config as config_lib
from trainers.modeling import models
from trainers.training import train
from trainers.modeling import weights as weights_lib

from conftest import needs_imagenet_weights as needs_shared
from conftest import WEIGHTS_035 as SHARED

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def mnv2_035_file(tmp_path_factory):
  """A weights file of mnv2_035's backbone (random values), as Keras writes one."""
  path = str(tmp_path_factory.mktemp("weights") / "mnv2_035.weights.h5")
  models.backbone_of(models.build_model("mnv2_035", 32, weights=None)).save_weights(path)
  return path


def _bad(tmp_path, kind, good):
  path = tmp_path / "weights.h5"
  if kind == "missing":
    return str(tmp_path / "nowhere.h5")
  if kind == "folder":
    path.mkdir()
  elif kind == "text":
    path.write_text("these are not weights\n")
  elif kind == "empty":
    path.write_bytes(b"")
  elif kind == "truncated":
    path.write_bytes(open(good, "rb").read()[:100_000])
  return str(path)


@pytest.mark.parametrize("kind, reason", [
    ("missing", "no such file"), ("folder", "is a folder"),
    ("text", "is not a readable HDF5 weights file"),
    ("empty", "is not a readable HDF5 weights file"),
    ("truncated", "is not a readable HDF5 weights file"),
])
def test_a_bad_weights_file_is_one_line_naming_it(tmp_path, mnv2_035_file, kind, reason):
  path = _bad(tmp_path, kind, mnv2_035_file)
  with pytest.raises(weights_lib.WeightsError) as error:
    weights_lib.resolve("mnv2_035", path, 96)
  message = str(error.value)
  assert message.startswith(f"--weights={path}") and reason in message
  assert "imagenet, or none" in message and "\n" not in message


def test_a_file_of_another_width_names_the_file_and_what_to_pass(tmp_path, mnv2_035_file):
  config = config_lib.Config(model="mnv2", model_dir=str(tmp_path), image_size=32,
                             weights=mnv2_035_file)
  with pytest.raises(weights_lib.WeightsError, match=(
      rf"--weights={mnv2_035_file} does not fit mnv2's backbone \(.*\): it holds the weights "
      r"of another architecture or width; pass the file made for mnv2 \(Keras names it "
      r"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5\)")):
    train.build(
        config, weights_lib.resolve(config.model, config.weights, 32))


def test_the_cli_stops_on_a_bad_file_before_training(tmp_path, data_dir):
  (tmp_path / "notes.h5").write_text("not weights")
  result = subprocess.run([sys.executable, "-m", "trainers.main", "--model=mnv2_035",
                           f"--data_dir={data_dir}", f"--model_dir={tmp_path / 'run'}",
                           f"--weights={tmp_path / 'notes.h5'}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(
      f"error: --weights={tmp_path / 'notes.h5'} is not a readable HDF5 weights file")
  assert not (tmp_path / "run" / "backup").exists()  # nothing trained


def test_offline_without_the_cached_file_names_it_and_its_folder(tmp_path, monkeypatch):
  monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
  assert weights_lib.resolve("mnv2_035", "imagenet", 160) == "imagenet"

  def no_network(*args, **kwargs):
    raise urllib.error.URLError("no network here")
  monkeypatch.setattr("keras.src.utils.file_utils.urlretrieve", no_network)
  config = config_lib.Config(model="mnv2_035", model_dir=str(tmp_path), image_size=160)
  folder = os.path.join(str(tmp_path / "keras"), "models")
  with pytest.raises(weights_lib.WeightsError, match=(
      r"--weights=imagenet: mnv2_035's ImageNet weights could not be downloaded \(no "
      r"network\?\) and are not in Keras's cache: put "
      r"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_160_no_top.h5 in " + folder)):
    train.build(config, "imagenet")


@needs_shared
def test_imagenet_weights_come_from_keras_s_cache_under_keras_s_name(tmp_path, monkeypatch):
  folder = tmp_path / "keras" / "models"
  folder.mkdir(parents=True)
  shutil.copy(SHARED, folder / os.path.basename(SHARED))
  monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
  resolved = weights_lib.resolve("mnv2_035", "imagenet", 224)
  assert resolved == str(folder / os.path.basename(SHARED))
  config = config_lib.Config(model="mnv2_035", model_dir=str(tmp_path), image_size=224)
  ours = models.backbone_of(train.build(config, resolved))
  reference = keras.applications.MobileNetV2(input_shape=(224, 224, 3), alpha=0.35,
                                             include_top=False, weights=SHARED)
  for got, expected in zip(ours.get_weights(), reference.get_weights(), strict=True):
    np.testing.assert_array_equal(got, expected)


@needs_shared
def test_the_shared_file_given_to_dn121_is_one_line(tmp_path):
  config = config_lib.Config(model="dn121", model_dir=str(tmp_path), image_size=32,
                             weights=SHARED)
  with pytest.raises(weights_lib.WeightsError, match=rf"--weights={SHARED} does not fit "
                                                     r"dn121's backbone"):
    train.build(
        config, weights_lib.resolve("dn121", SHARED, 32))


def test_keras_home_that_is_a_file_is_one_line(tmp_path, monkeypatch):
  (tmp_path / "keras").write_text("not a folder")
  monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
  with pytest.raises(weights_lib.WeightsError, match="is a file, where Keras keeps its "
                                                     "weights cache"):
    weights_lib.resolve("mnv2_035", "imagenet", 160)


@needs_shared
def test_imagenet_weights_tool_refuses_a_cached_file_of_another_network(tmp_path,
                                                                         monkeypatch):
  """The 0.35-wide file under the 1.0-wide model's name in Keras's cache: refused the
  way the trainer would refuse it, not printed as found."""
  from tools import imagenet_weights  # pylint: disable=g-import-not-at-top
  folder = tmp_path / "keras" / "models"
  folder.mkdir(parents=True)
  wrong = folder / models.REGISTRY["mnv2"].imagenet_file(96)
  shutil.copy(SHARED, wrong)
  monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
  with pytest.raises(weights_lib.WeightsError, match="does not fit mnv2's backbone"):
    imagenet_weights.find("mnv2", 96)
