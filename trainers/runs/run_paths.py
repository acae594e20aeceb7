"""The layout of a run folder: every file and folder a run writes, named in one place.

    RUN/config.json              the run's `Config` (`settings.load`)
    RUN/flags.txt                the command line, for --flagfile
    RUN/history.csv              one row per epoch
    RUN/metrics.json             written last: marks a finished run (`results.load`)
    RUN/predictions.csv          file_name, label, prediction, evaluation (plain or tta)
    RUN/model.keras              the whole trained model
    RUN/confusion.png, per_class.png, errors.png
    RUN/logs/<phase>/            TensorBoard
    RUN/backup/<phase>[_cached]/ BackupAndRestore pairs (`training.backups`)
    RUN/backup/<phase>.done.weights.h5, <phase>.clock.json, <phase>.early_stopping.json
    RUN/features/<phase>/        cached backbone features (`feature_cache`)
    RUN/export/                  default place of `trainers.export`'s output
"""

import dataclasses
import os

# Keras's BackupAndRestore pair, in every backup folder (`training.backups`).
BACKUP_WEIGHTS = "latest.weights.h5"
BACKUP_METADATA = "training_metadata.json"
# The key under which backups, cached features, clocks and metrics.json record
# the `settings.settings_sha256` of the run that made them.
SETTINGS_KEY = "settings_sha256"


@dataclasses.dataclass(frozen=True)
class RunPaths:
  """Paths of one run folder. `root` is the folder itself."""

  root: str

  def _join(self, *parts: str) -> str:
    return os.path.join(self.root, *parts)

  @property
  def config(self) -> str:
    return self._join("config.json")

  @property
  def flags(self) -> str:
    return self._join("flags.txt")

  @property
  def rerun(self) -> str:
    """The command that trains, resumes or evaluates this run again."""
    return f"python -m trainers.main --flagfile={self.flags}"

  @property
  def history(self) -> str:
    return self._join("history.csv")

  @property
  def metrics(self) -> str:
    return self._join("metrics.json")

  @property
  def predictions(self) -> str:
    return self._join("predictions.csv")

  @property
  def model(self) -> str:
    return self._join("model.keras")

  def figure(self, name: str) -> str:
    """confusion.png, per_class.png or errors.png."""
    return self._join(name)

  def logs(self, phase: str) -> str:
    return self._join("logs", phase)

  @property
  def backup_root(self) -> str:
    return self._join("backup")

  def backup(self, phase: str, cached: bool = False) -> str:
    """The BackupAndRestore folder of a phase (its own when the head trains on features)."""
    return self._join("backup", phase + ("_cached" if cached else ""))

  def done_weights(self, phase: str) -> str:
    return self._join("backup", f"{phase}.done.weights.h5")

  def clock(self, phase: str) -> str:
    return self._join("backup", f"{phase}.clock.json")

  def early_stopping(self, phase: str) -> str:
    return self._join("backup", f"{phase}.early_stopping.json")

  @property
  def features_root(self) -> str:
    return self._join("features")

  def features(self, phase: str) -> str:
    return self._join("features", phase)

  def export(self, export_format: str) -> str:
    return self._join("export", "saved_model" if export_format == "saved_model"
                      else "model.tflite")
