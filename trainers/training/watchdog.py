"""Bounds a blocking step of a multi-worker start, from outside the process.

Joining a MultiWorkerMirroredStrategy cluster blocks inside TensorFlow until
every task of TF_CONFIG has started; it holds the GIL (so no Python thread can
run) and ignores SIGTERM (measured with TF 2.21). So the watchdog is a small
process without TensorFlow:

    with watchdog.deadline(300, peers, what="worker 1 (127.0.0.1:2223) joining"):
      strategy = tf.distribute.MultiWorkerMirroredStrategy()

If the block has not finished in time, the helper prints one line naming the
peers that do not accept connections, and the process exits with status
EXIT_CODE: `faulthandler`'s timer runs in a C thread that needs no GIL, and
exits without Python's shutdown (its thread dump goes to /dev/null). SIGKILL
(status 137, which reads as out-of-memory) is only the helper's last resort if
the process is still there GRACE seconds later.
"""

import contextlib
import faulthandler
import os
import select
import signal
import socket
import subprocess
import sys
import time

EXIT_CODE = 1  # as every other one-line error of the trainer
GRACE = 10.0


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
      [sys.executable, "-m", "trainers.training.watchdog", str(os.getpid()), str(seconds), what,
       *peers], stdin=subprocess.PIPE, cwd=os.path.dirname(os.path.dirname(
           os.path.abspath(__file__))))
  sink = open(os.devnull, "w")  # pylint: disable=consider-using-with
  # The helper prints its line at `seconds`; this process exits a moment later.
  faulthandler.dump_traceback_later(seconds + 1, exit=True, file=sink)
  try:
    yield
  finally:
    faulthandler.cancel_dump_traceback_later()
    sink.close()
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
  deadline = time.time() + 1 + GRACE
  while time.time() < deadline:
    try:
      os.kill(parent, 0)
    except OSError:
      return  # it exited with EXIT_CODE
    time.sleep(0.1)
  os.kill(parent, signal.SIGKILL)


if __name__ == "__main__":
  _watch(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4:])
