"""Processes seen through /proc: the children a test must see exit."""

import os
import time


def pool_workers(pid: int) -> list[int]:
  """The multiprocessing children (workers, resource tracker) of `pid`."""
  found = []
  for entry in os.listdir("/proc"):
    try:
      with open(f"/proc/{entry}/stat") as stat:
        parent = int(stat.read().rsplit(")", 1)[1].split()[1])
      with open(f"/proc/{entry}/cmdline") as cmdline:
        if parent == pid and "multiprocessing" in cmdline.read():
          found.append(int(entry))
    except (OSError, ValueError, IndexError):
      continue
  return found


def running(pid: int) -> bool:
  """Alive and not a zombie (an exited orphan lingers until init reaps it)."""
  try:
    with open(f"/proc/{pid}/stat") as stat:
      return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError:
    return False


def still_running(pids, seconds: float) -> list[int]:
  """The pids still running after waiting up to `seconds` for them to end."""
  deadline = time.time() + seconds
  while time.time() < deadline and any(running(pid) for pid in pids):
    time.sleep(0.1)
  return [pid for pid in pids if running(pid)]
