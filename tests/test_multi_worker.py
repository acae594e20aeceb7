"""Multi-worker training: real processes over loopback, file sharding, faults.

Each cluster test starts real `trainers.main` workers with
`tools.launch_local_cluster` (about 10-20 s per cluster on 2 cores).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tools import launch_local_cluster
from trainers.data import dataset as dataset_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch_command(data_dir, model_dir, logs, *extra):
  return [sys.executable, "-m", "tools.launch_local_cluster", "--workers=2",
          f"--worker_logs={logs}", "--", sys.executable, "-m", "trainers.main",
          "--model=cnn2", "--strategy=multi_worker", f"--data_dir={data_dir}",
          f"--model_dir={model_dir}", "--image_size=48", "--batch_size=16", "--weights=none",
          "--cluster_timeout=120", *extra]


def _env(tmp_path):
  scratch = tmp_path / "tmp"  # where non-chief workers put their scratch folders
  scratch.mkdir(exist_ok=True)
  return dict(os.environ, TMPDIR=str(scratch)), scratch


@pytest.mark.slow  # 20-40 s of training or fresh processes (CI runs it)
def test_two_workers_train_on_their_own_files_and_only_the_chief_writes(data_dir, tmp_path):
  run, logs = tmp_path / "run", tmp_path / "logs"
  env, scratch = _env(tmp_path)
  started = time.time()
  result = subprocess.run(_launch_command(data_dir, run, logs, "--epochs=2"), cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
  print(f"2-worker run: {time.time() - started:.1f} s")
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = json.loads((run / "metrics.json").read_text())
  builder = dataset_lib.builder("animals10_tfds/160px", str(data_dir))
  assert metrics["test_images"] == builder.info.splits["test"].num_examples  # once, all of it
  assert 0 <= metrics["accuracy_test"] <= 1
  for worker in (0, 1):
    log = (logs / f"worker-{worker}.log").read_text()
    line = next(line for line in log.splitlines() if line.startswith(f"worker {worker} of 2:"))
    assert "8 images from its file share" in line, line
    assert int(line.split(": ")[1].split()[0]) > 0, line  # this worker ran training steps
  assert sorted(path.name for path in run.iterdir()) == [
      ".lock", "backup", "config.json", "confusion.png", "errors.png", "flags.txt",
      "history.csv", "logs", "metrics.json", "model.keras", "per_class.png", "predictions.csv"]
  assert not list(scratch.iterdir())  # the non-chief's scratch folder is gone


@pytest.mark.slow
def test_killed_worker_then_the_same_command_resumes_and_finishes(data_dir, tmp_path):
  run, logs = tmp_path / "run", tmp_path / "logs"
  env, _ = _env(tmp_path)
  command = _launch_command(data_dir, run, logs, "--epochs=6")
  started = time.time()
  first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  metadata = run / "backup" / "train" / "training_metadata.json"
  while not metadata.exists():
    assert first.poll() is None, first.communicate()[1][-3000:]
    assert time.time() - started < 300
    time.sleep(0.1)
  os.kill(int((logs / "worker-1.pid").read_text()), signal.SIGKILL)
  killed = time.time()
  _, stderr = first.communicate(timeout=120)
  print(f"the cluster ended {time.time() - killed:.1f} s after the kill")
  assert first.returncode == 128 + signal.SIGKILL, stderr[-3000:]
  assert "worker 1 was killed by signal 9" in stderr
  assert "error: worker 0 lost its cluster" in (logs / "worker-0.log").read_text()
  assert not (run / "metrics.json").exists()
  resumed_from = json.loads(metadata.read_text())["epoch"]
  assert 1 <= resumed_from < 6

  second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
  print(f"kill + restart: {time.time() - started:.1f} s")
  assert second.returncode == 0, second.stderr[-3000:]
  chief_log = (logs / "worker-0.log").read_text()
  assert f"Epoch {resumed_from + 1}/6" in chief_log and "Epoch 1/6" not in chief_log
  history = (run / "history.csv").read_text().splitlines()
  assert [row.split(",")[0] for row in history[1:]] == [str(epoch) for epoch in range(6)]
  assert json.loads((run / "metrics.json").read_text())["test_images"] > 0


@pytest.mark.slow
def test_unreachable_peer_fails_with_one_line_in_bounded_time(data_dir, tmp_path):
  port = launch_local_cluster.free_ports("127.0.0.1", 2)
  tf_config = launch_local_cluster.tf_configs("127.0.0.1", port)[0]  # worker 1 never starts
  started = time.time()
  result = subprocess.run(
      [sys.executable, "-m", "trainers.main", "--model=cnn2", "--strategy=multi_worker",
       f"--data_dir={data_dir}", f"--model_dir={tmp_path / 'run'}", "--weights=none",
       "--cluster_timeout=5"], cwd=REPO, env=dict(os.environ, TF_CONFIG=tf_config),
      capture_output=True, text=True, timeout=120)
  elapsed = time.time() - started
  print(f"unreachable peer: failed after {elapsed:.1f} s")
  assert result.returncode == 1  # its own status, not SIGKILL's 137 ("Killed")
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and f"no answer from 127.0.0.1:{port[1]}" in errors[0], errors
  assert "gave up after 5 s" in errors[0] and "Traceback" not in result.stderr


def test_launcher_returns_the_failing_workers_status_and_stops_the_others(tmp_path):
  script = ("import json, os, sys, time\n"
            "index = json.loads(os.environ['TF_CONFIG'])['task']['index']\n"
            "print('worker', index, 'up', flush=True)\n"
            "sys.exit(5) if index == 1 else time.sleep(120)\n")
  started = time.time()
  status = launch_local_cluster.launch([sys.executable, "-c", script], workers=2,
                                       logs=str(tmp_path), grace=2)
  assert status == 5 and time.time() - started < 60
  assert (tmp_path / "worker-1.log").read_text() == "worker 1 up\n"
  chief = int((tmp_path / "worker-0.pid").read_text())
  with pytest.raises(ProcessLookupError):
    os.kill(chief, 0)  # stopped (and reaped)


def test_tf_configs_name_every_worker_once():
  ports = launch_local_cluster.free_ports("127.0.0.1", 3)
  assert len(set(ports)) == 3
  configs = [json.loads(text) for text in launch_local_cluster.tf_configs("127.0.0.1", ports)]
  assert [config["task"]["index"] for config in configs] == [0, 1, 2]
  assert all(config["cluster"]["worker"] == [f"127.0.0.1:{port}" for port in ports]
             for config in configs)
