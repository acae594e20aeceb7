"""The run folder's lock: one process at a time, a dead holder's lock taken over."""

import json
import os
import subprocess
import sys
import textwrap

import trainer_runs

REPO = trainer_runs.REPO


def test_a_second_process_on_a_run_folder_stops_with_one_line(data_dir, tmp_path):
  from trainers.runs import run_lock  # pylint: disable=g-import-not-at-top
  holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
      import sys, time
      from trainers.runs import run_lock
      with run_lock.hold({str(tmp_path / "run")!r}):
        print("held", flush=True)
        time.sleep(60)
      """)], cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    result = trainer_runs.main_command("--model=cnn2", f"--data_dir={data_dir}",
                                       f"--model_dir={tmp_path / 'run'}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"is in use by pid {holder.pid}" in result.stderr
  finally:
    holder.kill()  # SIGKILL: the kernel releases its lock
    holder.wait()
  with run_lock.hold(str(tmp_path / "run")):  # a dead holder's lock is taken over
    assert json.loads((tmp_path / "run" / ".lock").read_text())["pid"] == os.getpid()
