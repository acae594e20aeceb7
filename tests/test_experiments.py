"""The study's experiments as flagfiles pin its hyper-parameters."""

from absl import flags
import pytest

from tools import reproduce

STUDY = {  # experiment: (model, epochs, batch, augment, JPEG+RGB only, fine-tune)
    "model_01": ("cnn2", 60, 24, "none", False, False),
    "model_02": ("cnn2", 60, 24, "none", True, False),
    "model_03": ("cnn2", 60, 24, "study", True, False),  # the bare --augment
    "model_04": ("cnn4", 60, 128, "study", True, False),
    "mnv2": ("mnv2", 60, 128, "none", True, False),
    "mnv2_fine_tune": ("mnv2", 60, 128, "none", True, True),
    "enb3": ("enb3", 10, 32, "none", True, False),
    "dn121": ("dn121", 10, 32, "none", True, False),
}
# Beside the study's rows: its mnv2 rows with the 0.35-wide MobileNetV2, at 160 px.
PRESETS = {
    "mnv2_035": ("mnv2_035", 60, 128, "none", True, False),
    "mnv2_035_fine_tune": ("mnv2_035", 60, 128, "none", True, True),
}
# The modern recipe (issue 23): model, augmentation, mixup, fine-tune.
MODERN = {
    "mnv2_035_modern": ("mnv2_035", "none", 0.0, False),
    "cnn4_modern": ("cnn4", "study", 0.2, False),
    "enb2s_modern": ("enb2s", "randaugment", 0.2, True),
    "convnext_tiny_modern": ("convnext_tiny", "randaugment", 0.2, True),
}


@pytest.fixture(scope="module")
def trainer_flags():
  from trainers import main  # pylint: disable=g-import-not-at-top
  if "model" not in flags.FLAGS:
    main.define_flags()
  yield main
  flags.FLAGS.unparse_flags()


@pytest.mark.parametrize("experiment", sorted(STUDY) + sorted(PRESETS))
def test_flagfile_parses_to_the_study_settings(trainer_flags, experiment):
  command = reproduce.command(experiment, 0, "DATA", "RUN")
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["trainers.main"] + [arg for arg in command if arg.startswith("--")])
  config = trainer_flags.config_from_flags()
  model, epochs, batch, augment, jpeg_rgb, fine_tune = {**STUDY, **PRESETS}[experiment]
  assert (config.model, config.epochs, config.batch_size, config.augment) == (
      model, epochs, batch, augment)
  assert (config.keep_formats == ("JPEG",) and config.keep_modes == ("RGB",)) == jpeg_rgb
  assert config.fine_tune == fine_tune
  assert (config.balance, config.image_size, config.resize) == (
      "undersample", 160 if experiment in PRESETS else 100, "crop")
  assert config.learning_rate == 0.001 and config.early_stopping_patience > 0
  assert config.head_units == (128,)
  assert config.deterministic and config.model_dir == "RUN" and config.data_dir == "DATA"


@pytest.mark.parametrize("experiment", sorted(MODERN))
def test_modern_flagfiles_keep_the_studys_data_and_change_the_recipe(trainer_flags, experiment):
  command = reproduce.command(experiment, 0, "DATA", "RUN")
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["trainers.main"] + [arg for arg in command if arg.startswith("--")])
  config = trainer_flags.config_from_flags()
  model, augment, mixup, fine_tune = MODERN[experiment]
  assert (config.model, config.augment, config.mixup, config.fine_tune) == (
      model, augment, mixup, fine_tune)
  assert (config.balance, config.keep_formats, config.keep_modes) == (
      "undersample", ("JPEG",), ("RGB",))
  assert (config.label_smoothing, config.optimizer, config.weight_decay, config.schedule) == (
      0.1, "adamw", 0.05, "cosine")
  assert config.warmup_epochs >= 1 and config.ema and config.tta
  assert config.early_stopping_patience == 0  # the schedule runs to its end


def test_every_study_row_and_preset_has_a_flagfile():
  assert reproduce.available() == sorted({**STUDY, **PRESETS, **MODERN})


def test_quick_and_weights_override_come_after_the_flagfile():
  command = reproduce.command("mnv2", 1, None, "RUN", quick=True, weights="none")
  assert command.index("--weights=none") > command.index(
      [arg for arg in command if arg.startswith("--flagfile")][0])
  assert "--steps_per_epoch=3" in command and "--seed=1" in command


def test_nocache_features_reaches_every_run(trainer_flags):
  command = reproduce.command("dn121", 0, "DATA", "RUN", cache_features=False)
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["trainers.main"] + [arg for arg in command if arg.startswith("--")])
  assert trainer_flags.config_from_flags().cache_features is False
  assert "--nocache_features" not in reproduce.command("dn121", 0, "DATA", "RUN")


def test_overrides_after_the_flagfile_reach_every_run_and_its_config(trainer_flags):
  overrides = ["--keep_formats=", "--keep_modes=", "--balance=class_weight"]
  command = reproduce.command("model_02", 0, "DATA", "RUN", overrides=overrides)
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["trainers.main"] + [arg for arg in command if arg.startswith("--")])
  config = trainer_flags.config_from_flags()
  assert (config.keep_formats, config.keep_modes, config.balance) == ((), (), "class_weight")
  assert config.overrides == tuple(overrides)


def test_weights_per_model_go_to_the_experiments_of_that_model():
  weights = "mnv2=a.h5,mnv2_035=b.h5"
  assert "--weights=a.h5" in reproduce.command("mnv2_fine_tune", 0, None, "RUN", weights=weights)
  assert "--weights=b.h5" in reproduce.command("mnv2_035", 0, None, "RUN", weights=weights)
  assert not any(arg.startswith("--weights=") and arg != "--weights=imagenet"
                 for arg in reproduce.command("enb3", 0, None, "RUN", weights=weights))


def test_weights_override_skips_the_cnns():
  assert "--weights=w.h5" in reproduce.command("mnv2_035", 0, None, "RUN", weights="w.h5")
  assert not any(arg.startswith("--weights")
                 for arg in reproduce.command("model_01", 0, None, "RUN", weights="w.h5"))


@pytest.mark.parametrize("override, names", [
    ("--flagfile=trainers/experiments/mnv2.flags", "flagfile"), ("--seed=7", "seed"),
    ("--model_dir=X", "model_dir"), ("--data_dir=D", "data_dir")])
def test_overrides_that_name_the_run_are_refused_before_anything_trains(tmp_path, override,
                                                                        names):
  with pytest.raises(ValueError, match=f"{override} after -- would name the run"):
    reproduce.reproduce(["model_01"], [0], None, str(tmp_path), overrides=[override])
  assert not (tmp_path / "model_01").exists()
  del names


def test_an_override_the_trainer_does_not_take_is_refused_before_anything_trains(tmp_path):
  with pytest.raises(ValueError, match="the flags after -- are not the trainer's .*typo"):
    reproduce.reproduce(["model_01"], [0], None, str(tmp_path), overrides=["--typo=1"])
  assert not (tmp_path / "model_01").exists()
  reproduce.check_overrides(["--epochs=3", "--nocache_features", "--keep_formats="])


@pytest.mark.parametrize("weights, message", [
    ("mnv2=", "write each pair as MODEL=FILE"), ("=a.h5", "write each pair as MODEL=FILE"),
    ("mnv9=a.h5", "mnv9 is not a model of the registry")])
def test_a_bad_weights_pair_is_one_line_before_anything_trains(tmp_path, weights, message):
  with pytest.raises(ValueError, match=message):
    reproduce.reproduce(["mnv2"], [0], None, str(tmp_path), weights=weights)
  assert not (tmp_path / "mnv2").exists()
