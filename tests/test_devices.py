"""Roles from TF_CONFIG and the precision policy: decided once per run."""

import json

import pytest

from trainers.training import devices


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


def test_explicit_precision_passes_through_whatever_the_machine(monkeypatch):
  monkeypatch.setenv(devices.AUTO_PRECISION_VARIABLE, "mixed_float16")
  for policy in devices.POLICIES:
    assert devices.resolve_precision(policy, "auto") == policy


@pytest.mark.parametrize("machine, policy", [
    (devices.Hardware(gpu_capabilities=((8, 0),)), "mixed_float16"),  # A100: tensor cores
    (devices.Hardware(gpu_capabilities=((7, 0), (7, 0))), "mixed_float16"),  # V100 pair
    (devices.Hardware(gpu_capabilities=((6, 1),)), "float32"),  # P40: no tensor cores
    (devices.Hardware(tpu=True), "mixed_bfloat16"),
    (devices.Hardware(cpu_flags=frozenset({"avx512f", "avx512_bf16"})), "mixed_bfloat16"),
    (devices.Hardware(cpu_flags=frozenset({"avx512f", "amx_bf16", "amx_tile"})),
     "mixed_bfloat16"),
    (devices.Hardware(cpu_flags=frozenset({"avx2", "fma", "avx512f"})), "float32"),
    (devices.Hardware(), "float32"),
    # A GPU decides, whatever the CPU has.
    (devices.Hardware(gpu_capabilities=((6, 0),), cpu_flags=frozenset({"amx_bf16"})),
     "float32"),
])
def test_auto_picks_the_policy_of_the_hardware(machine, policy):
  assert devices.auto_policy(machine) == policy


def test_cpu_flags_are_read_from_cpuinfo_text():
  cpuinfo = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
             "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n\nprocessor\t: 1\n")
  flags = devices.cpu_flags(cpuinfo)
  assert {"avx512_bf16", "amx_bf16", "avx2"} <= flags and devices.cpu_has_bf16(flags)
  assert not devices.cpu_has_bf16(devices.cpu_flags("flags\t: fpu avx2 fma\n"))
  assert devices.cpu_flags("no flags here") == frozenset()


def test_this_machine_s_hardware_decides_auto_unless_the_variable_forces_it(monkeypatch):
  monkeypatch.delenv(devices.AUTO_PRECISION_VARIABLE, raising=False)
  assert devices.resolve_precision("auto", "auto") == devices.auto_policy(
      devices.hardware("auto"))
  assert devices.resolve_precision("auto", "tpu") == "mixed_bfloat16"
  for policy in devices.POLICIES:
    monkeypatch.setenv(devices.AUTO_PRECISION_VARIABLE, policy)
    assert devices.resolve_precision("auto", "auto") == policy
  monkeypatch.setenv(devices.AUTO_PRECISION_VARIABLE, "fp8")
  with pytest.raises(ValueError, match="ANIMALS10_AUTO_PRECISION=fp8 is not one of float32"):
    devices.resolve_precision("auto", "auto")
