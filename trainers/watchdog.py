"""Bounds a blocking step of a multi-worker start, from outside the process.

Joining a MultiWorkerMirroredStrategy cluster blocks inside TensorFlow until
every task of TF_CONFIG has started; it holds the GIL (so no Python thread can
run) and ignores SIGTERM (measured with TF 2.21). So the watchdog is a small
process without TensorFlow:

    with watchdog.deadline(300, peers, what="worker 1 (127.0.0.1:2223) joining"):
      strategy = tf.distribute.MultiWorkerMirroredStrategy()

If the block has not finished in time, it prints one line naming the peers
that do not accept connections and kills the process (SIGKILL).
"""

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys


def accepts_connections(address: str, timeout: float = 2) -> bool:
  """Whether host:port accepts a TCP connection."""
  host, _, port = address.rpartition(":")
  try:
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
      return True
  except (OSError, ValueError):
    return False


@contextlib.contextmanager
def deadline(seconds: float, peers, what: str):
  """Kills this process with a one-line error if the block outlasts `seconds`."""
  helper = subprocess.Popen(
      [sys.executable, "-m", "trainers.watchdog", str(os.getpid()), str(seconds), what,
       *peers], stdin=subprocess.PIPE, cwd=os.path.dirname(os.path.dirname(
           os.path.abspath(__file__))))
  try:
    yield
  finally:
    helper.stdin.close()  # EOF: the block is over, the helper exits
    helper.wait()


def _watch(parent: int, seconds: float, what: str, peers):
  ready, _, _ = select.select([sys.stdin], [], [], seconds)
  if ready:
    return
  silent = [peer for peer in peers if not accepts_connections(peer)]
  detail = (f"no answer from {', '.join(silent)}" if silent else
            f"{', '.join(peers)} answer but did not join")
  sys.stderr.write(f"error: {what} gave up after {seconds:g} s: {detail}. Start every task "
                   "of TF_CONFIG with the same command, check the addresses, or raise "
                   "--cluster_timeout.\n")
  sys.stderr.flush()
  os.kill(parent, signal.SIGKILL)


if __name__ == "__main__":
  _watch(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4:])
