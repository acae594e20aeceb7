r"""Runs one multi-worker training on this machine: N processes over loopback.

    python -m tools.launch_local_cluster --workers=2 -- \
        python -m trainers.main --model=cnn2 --strategy=multi_worker \
            --data_dir=work/tensorflow_datasets --model_dir=work/runs/cnn2_2workers

Every worker gets the same command and its own TF_CONFIG (free ports on
--host; worker 0 is the chief, which writes the run folder). The chief's output
is shown here; every worker's output and pid go to --worker_logs
(worker-N.log, worker-N.pid). When a worker fails, the others get --grace
seconds to notice and end by themselves, then SIGKILL (a worker blocked in a
collective ignores SIGTERM), and the failed worker's exit status is returned;
otherwise the chief's. Rerunning the same command
resumes the run from its last finished epoch.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from absl import app
from absl import flags

_WORKERS = flags.DEFINE_integer("workers", 2, "Worker processes to start.")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address the workers listen on.")
_WORKER_LOGS = flags.DEFINE_string(
    "worker_logs", None, "Folder for worker-N.log and worker-N.pid (default: a temporary "
    "folder, deleted when every worker succeeds).")
_GRACE = flags.DEFINE_float("grace", 20, "Seconds the other workers get to end by themselves "
                            "after one failed, before SIGKILL.")


def free_ports(host: str, count: int) -> list[int]:
  """`count` distinct ports that are free on `host` right now."""
  sockets = []
  try:
    for _ in range(count):
      sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
      sock.bind((host, 0))
      sockets.append(sock)
    return [sock.getsockname()[1] for sock in sockets]
  finally:
    for sock in sockets:
      sock.close()


def tf_configs(host: str, ports: list[int]) -> list[str]:
  """The TF_CONFIG of each worker of a cluster on `host:ports`."""
  cluster = {"worker": [f"{host}:{port}" for port in ports]}
  return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
          for index in range(len(ports))]


class Cluster:
  """The worker processes, their logs, and stopping them together."""

  def __init__(self, command: list[str], workers: int, host: str, logs: str):
    self.logs = logs
    self.processes, self._threads = [], []
    for index, tf_config in enumerate(tf_configs(host, free_ports(host, workers))):
      env = dict(os.environ, TF_CONFIG=tf_config)
      process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
      with open(self.path(index, "pid"), "w") as file:
        file.write(f"{process.pid}\n")
      thread = threading.Thread(target=self._copy, args=(index, process), daemon=True)
      thread.start()
      self.processes.append(process)
      self._threads.append(thread)

  def path(self, index: int, kind: str) -> str:
    return os.path.join(self.logs, f"worker-{index}.{kind}")

  def _copy(self, index: int, process: subprocess.Popen):
    with open(self.path(index, "log"), "wb") as log:
      for line in process.stdout:
        log.write(line)
        log.flush()
        if index == 0:
          sys.stdout.buffer.write(line)
          sys.stdout.flush()

  def wait(self) -> tuple[int, int]:
    """Waits until all succeed or one fails: (worker index, exit status)."""
    while True:
      for index, process in enumerate(self.processes):
        status = process.poll()
        if status not in (None, 0):
          return index, status
      if all(process.poll() == 0 for process in self.processes):
        return 0, 0
      time.sleep(0.2)

  def stop(self, grace: float, ask_first: bool = False):
    """Gives running workers `grace` seconds to end, then kills them.

    After a worker failed, the others end by themselves once their collectives
    notice (1-10 s, measured on loopback) and print why; a worker blocked in a
    collective ignores SIGTERM, so SIGKILL ends the stragglers.
    """
    running = [process for process in self.processes if process.poll() is None]
    if ask_first:
      for process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.time() + grace
    for process in running:
      try:
        process.wait(max(0.0, deadline - time.time()))
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for thread in self._threads:
      thread.join(timeout=5)

  def tail(self, index: int, lines: int = 5) -> str:
    with open(self.path(index, "log"), errors="replace") as file:
      return "".join(file.readlines()[-lines:])


def launch(command: list[str], workers: int, host: str = "127.0.0.1",
           logs: str = None, grace: float = 20) -> int:
  """Runs `command` as a `workers`-worker cluster; returns the exit status."""
  keep_logs = logs is not None
  logs = logs or tempfile.mkdtemp(prefix="animals10-cluster-")
  os.makedirs(logs, exist_ok=True)
  cluster = Cluster(command, workers, host, logs)
  pids = ", ".join(f"{index}: {process.pid}" for index, process in enumerate(cluster.processes))
  print(f"launch_local_cluster: {workers} workers on {host} (pids {pids}), logs in {logs}",
        file=sys.stderr, flush=True)

  def interrupted(signum, frame):
    del frame
    cluster.stop(grace, ask_first=True)
    sys.exit(128 + signum)

  previous = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
  try:
    index, status = cluster.wait()
  finally:
    cluster.stop(grace)
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  if status:
    how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
    print(f"launch_local_cluster: worker {index} {how}; stopped the others. Its last lines "
          f"({cluster.path(index, 'log')}):\n{cluster.tail(index)}", file=sys.stderr)
    return status if status > 0 else 128 - status
  if not keep_logs:
    for index in range(workers):
      for kind in ("log", "pid"):
        os.remove(cluster.path(index, kind))
    os.rmdir(logs)
  return 0


def main(argv):
  command = argv[1:]
  if command[:1] == ["--"]:
    command = command[1:]
  if not command:
    raise app.UsageError("Give the training command after --, e.g. -- python -m "
                         "trainers.main --model=cnn2 --strategy=multi_worker --model_dir=RUN")
  if _WORKERS.value < 1:
    raise app.UsageError("--workers must be at least 1.")
  if "--strategy=multi_worker" not in command:
    print("launch_local_cluster: the command has no --strategy=multi_worker; each worker "
          "would train alone.", file=sys.stderr)
  sys.exit(launch(command, _WORKERS.value, _HOST.value, _WORKER_LOGS.value, _GRACE.value))


if __name__ == "__main__":
  app.run(main)
