"""Roles from TF_CONFIG and the precision policy: decided once per run."""

import json

import pytest

from trainers import devices


def _tf_config(monkeypatch, cluster, task):
  monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))


def test_a_single_process_run_is_its_own_chief():
  this = devices.role("auto")
  assert this.is_chief and this.num_workers == 1 and this.resolver is None


def test_workers_read_their_place_from_tf_config(monkeypatch):
  cluster = {"worker": ["10.0.0.1:2222", "10.0.0.2:2222", "10.0.0.3:2222"]}
  _tf_config(monkeypatch, cluster, {"type": "worker", "index": 1})
  this = devices.role("multi_worker")
  assert (this.task_type, this.index, this.num_workers) == ("worker", 1, 3)
  assert not this.is_chief and this.name == "worker 1" and this.address == "10.0.0.2:2222"
  assert this.peers == ("10.0.0.1:2222", "10.0.0.3:2222")
  assert this.resolver.task_id == 1  # the strategy is made from the same resolver
  _tf_config(monkeypatch, cluster, {"type": "worker", "index": 0})
  assert devices.role("multi_worker").is_chief


def test_a_chief_task_is_the_chief_and_worker_0_is_not(monkeypatch):
  cluster = {"chief": ["c:1"], "worker": ["w:1", "w:2"]}
  _tf_config(monkeypatch, cluster, {"type": "worker", "index": 0})
  assert not devices.role("multi_worker").is_chief
  _tf_config(monkeypatch, cluster, {"type": "chief", "index": 0})
  chief = devices.role("multi_worker")
  assert chief.is_chief and chief.num_workers == 3 and chief.peers == ("w:1", "w:2")


@pytest.mark.parametrize("raw, match", [
    (None, "needs the TF_CONFIG environment variable"),
    ("{not json", "not a usable cluster spec"),
    (json.dumps({"cluster": {"worker": ["w:1"]}, "task": {"type": "worker", "index": 3}}),
     "not a usable cluster spec"),
])
def test_a_bad_tf_config_is_one_clear_error(monkeypatch, raw, match):
  if raw is None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
  else:
    monkeypatch.setenv("TF_CONFIG", raw)
  with pytest.raises(ValueError, match=match):
    devices.role("multi_worker")


def test_precision_auto_follows_the_hardware_and_explicit_values_pass_through(monkeypatch):
  assert devices.resolve_precision("float32", "auto") == "float32"
  assert devices.resolve_precision("auto", "tpu") == "mixed_bfloat16"
  monkeypatch.setattr(devices, "cpu_has_bf16", lambda: True)
  assert devices.resolve_precision("auto", "auto") == "mixed_bfloat16"  # no GPU here
  monkeypatch.setattr(devices, "cpu_has_bf16", lambda: False)
  assert devices.resolve_precision("auto", "auto") == "float32"
