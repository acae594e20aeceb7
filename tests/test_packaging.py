"""A plain (non-editable) install, run from outside the clone, has what it needs."""

import os
import subprocess
import sys
import sysconfig

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_a_plain_install_is_quiet_and_runs_an_experiment_from_elsewhere(data_dir, tmp_path):
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
  python = str(venv / "bin" / "python")
  new_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                             "['purelib'])"], capture_output=True, text=True,
                            check=True).stdout.strip()
  # The dependencies of this test's own environment, so nothing is downloaded.
  with open(os.path.join(new_site, "dependencies.pth"), "w") as file:
    file.write(sysconfig.get_paths()["purelib"] + "\n")
  install = subprocess.run([python, "-m", "pip", "install", "--no-deps",
                            "--no-build-isolation", "--no-index", REPO],
                           capture_output=True, text=True, timeout=600)
  assert install.returncode == 0, install.stderr[-3000:]
  assert "is absent from the `packages` configuration" not in install.stdout + install.stderr
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  run = subprocess.run([python, "-m", "tools.reproduce", "--quick", "--experiments=model_01",
                        f"--data_dir={data_dir}", f"--out={elsewhere / 'runs'}"],
                       cwd=elsewhere, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert (elsewhere / "runs" / "model_01" / "seed_0" / "metrics.json").exists()
  located = subprocess.run([python, "-c", "import trainers; print(trainers.__file__)"],
                           cwd=elsewhere, capture_output=True, text=True).stdout
  assert located.startswith(new_site)  # the installed copy ran, not the clone
