"""Devices, precision policy and distribution strategy: decided once per run."""

import dataclasses
import os
from typing import Any, Optional

import tensorflow as tf

from trainers.training import watchdog


class PeerLostError(RuntimeError):
  """A worker of a multi-worker run stopped or became unreachable mid-run."""


# What collective ops raise when a peer dies (measured: Unavailable "Socket
# closed" within a second on loopback, Internal "Collective ops is aborted").
PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError,
               tf.errors.CancelledError, tf.errors.DeadlineExceededError,
               tf.errors.InternalError)


@dataclasses.dataclass(frozen=True)
class Role:
  """This process's place in a multi-worker cluster (from TF_CONFIG)."""

  task_type: str = "worker"
  index: int = 0
  num_workers: int = 1
  has_chief_task: bool = False
  address: str = ""
  peers: tuple[str, ...] = ()  # the other tasks' host:port
  # The TFConfigClusterResolver that read TF_CONFIG (multi-worker only): the
  # strategy is made from it, so TF_CONFIG is parsed once.
  resolver: Optional[Any] = dataclasses.field(default=None, compare=False, repr=False)

  @property
  def is_chief(self) -> bool:
    """The chief writes the run folder: the "chief" task, else worker 0."""
    return self.task_type == "chief" if self.has_chief_task else self.index == 0

  @property
  def name(self) -> str:
    return f"{self.task_type} {self.index}"


def role(strategy: str) -> Role:
  """This process's role: a single-process run unless --strategy=multi_worker.

  Raises:
    ValueError: multi_worker without a usable TF_CONFIG.
  """
  if strategy != "multi_worker":
    return Role()
  if not os.environ.get("TF_CONFIG"):
    raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable on "
                     "every worker: start them with `python -m tools.launch_local_cluster` "
                     "or see README, Multi-GPU and multi-host.")
  try:
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    cluster = resolver.cluster_spec().as_dict()
    chiefs, workers = list(cluster.get("chief", [])), list(cluster.get("worker", []))
    task_type, index = resolver.task_type, int(resolver.task_id)
    address = {"chief": chiefs, "worker": workers}[task_type][index]
  except (ValueError, KeyError, IndexError, TypeError, AttributeError) as error:
    raise ValueError(f"TF_CONFIG is not a usable cluster spec ({error!r}): it needs "
                     '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": '
                     '"worker", "index": N}}.') from None
  return Role(task_type=task_type, index=index, num_workers=len(chiefs) + len(workers),
              has_chief_task=bool(chiefs), address=address,
              peers=tuple(peer for peer in chiefs + workers if peer != address),
              resolver=resolver)


def split_cpu(count: int):
  """Splits the CPU into `count` logical devices (to exercise multi-device code)."""
  if count > 1:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])


POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
# Makes `--precision=auto` pick this policy whatever the hardware (tests, CI: to show
# that no test depends on what auto picks here). Read only by `resolve_precision`.
AUTO_PRECISION_VARIABLE = "ANIMALS10_AUTO_PRECISION"


@dataclasses.dataclass(frozen=True)
class Hardware:
  """What `--precision=auto` decides by.

  Attributes:
    gpu_capabilities: the CUDA compute capability of each visible GPU.
    cpu_flags: the CPU's feature flags, as /proc/cpuinfo spells them.
    tpu: the run uses a TPU (--strategy=tpu).
  """

  gpu_capabilities: tuple[tuple[int, int], ...] = ()
  cpu_flags: frozenset = frozenset()
  tpu: bool = False


def cpu_flags(cpuinfo: str) -> frozenset:
  """The feature flags of the first CPU listed in a /proc/cpuinfo text."""
  for line in cpuinfo.splitlines():
    key, _, value = line.partition(":")
    if key.strip() == "flags":
      return frozenset(value.split())
  return frozenset()


def _cpuinfo() -> str:
  try:
    with open("/proc/cpuinfo") as file:
      return file.read()
  except OSError:
    return ""


def hardware(strategy: str) -> Hardware:
  """This machine's `Hardware`, for a run of `--strategy=strategy`."""
  capabilities = []
  for gpu in tf.config.list_physical_devices("GPU"):
    capability = tf.config.experimental.get_device_details(gpu).get(
        "compute_capability", (0, 0))
    capabilities.append(tuple(capability))
  return Hardware(gpu_capabilities=tuple(capabilities), cpu_flags=cpu_flags(_cpuinfo()),
                  tpu=strategy == "tpu")


# The CPU features that decide a figure here: AVX-512 (oneDNN's wide kernels),
# AVX512_BF16 and AMX (bf16 arithmetic: what --precision=auto picks by).
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")


def machine(precision: Optional[str] = None) -> dict:
  """The machine a figure is measured on, for a benchmark's JSON and printout.

  Args:
    precision: the policy the figure ran under (None where no model runs).
  """
  info = _cpuinfo()
  model = next((line.partition(":")[2].strip() for line in info.splitlines()
                if line.startswith("model name")), "unknown")
  flags = cpu_flags(info)
  return {"cpu": model,
          "cpu_flags": {name: name in flags for name in SPEED_FLAGS},
          "cores": len(os.sched_getaffinity(0)),
          "gpus": [device.name for device in tf.config.list_physical_devices("GPU")],
          "tensorflow": tf.__version__,
          "precision": precision}


def machine_line(described: dict) -> str:
  """`machine(...)` in one line: CPU, its speed flags present, cores, TensorFlow, policy."""
  flags = ",".join(name for name, present in described["cpu_flags"].items() if present)
  gpus = f", {len(described['gpus'])} GPU" if described["gpus"] else ""
  precision = f", {described['precision']}" if described["precision"] else ""
  return (f"machine: {described['cpu']} [{flags or 'no AVX2'}], {described['cores']} cores"
          f"{gpus}, TensorFlow {described['tensorflow']}{precision}")


def cpu_has_bf16(flags: Optional[frozenset] = None) -> bool:
  """Whether the CPU (default: this one) has bfloat16 arithmetic (AVX512_BF16 or AMX)."""
  flags = cpu_flags(_cpuinfo()) if flags is None else flags
  return bool({"avx512_bf16", "amx_bf16"} & flags)


def auto_policy(machine: Hardware) -> str:
  """The policy `--precision=auto` picks on `machine`.

  Measured on a 2-core AVX512_BF16 CPU, cnn2 trains at 259 img/s in float32,
  401 in mixed_bfloat16 and 62 in mixed_float16 (no fp16 units): so fp16 only on
  GPUs that have tensor cores (compute capability >= 7.0), bf16 on TPUs and on
  CPUs with bf16 instructions, float32 otherwise (older GPUs gain nothing from
  fp16 and would pay for loss scaling).
  """
  if machine.tpu:
    return "mixed_bfloat16"
  if machine.gpu_capabilities:
    return "mixed_float16" if machine.gpu_capabilities[0] >= (7, 0) else "float32"
  return "mixed_bfloat16" if cpu_has_bf16(machine.cpu_flags) else "float32"


def resolve_precision(precision: str, strategy: str) -> str:
  """The Keras policy for `--precision`: "auto" is `auto_policy` of this machine,
  or the policy named by the ANIMALS10_AUTO_PRECISION environment variable.

  Raises:
    ValueError: that variable names no policy.
  """
  if precision != "auto":
    return precision
  forced = os.environ.get(AUTO_PRECISION_VARIABLE, "")
  if forced:
    if forced not in POLICIES:
      raise ValueError(f"{AUTO_PRECISION_VARIABLE}={forced} is not one of "
                       f"{', '.join(POLICIES)}: set one of them, or unset it to let "
                       "--precision=auto follow the hardware.")
    return forced
  return auto_policy(hardware(strategy))


def make_strategy(name: str, tpu: str = "", cluster_timeout: float = 300,
                  this: Optional[Role] = None) -> tf.distribute.Strategy:
  """The tf.distribute strategy for `--strategy`.

  "auto" mirrors over all visible GPUs when there are several, else uses the
  default (single-device) strategy. "mirrored" without GPUs mirrors over the
  logical CPU devices (see `split_cpu`). "multi_worker" joins the cluster of
  `this` (default: `role(name)`), or exits with one line after
  `cluster_timeout` seconds.
  """
  if name == "tpu":
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  if name == "multi_worker":
    return _multi_worker_strategy(this or role(name), cluster_timeout)
  gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
  cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
  if name == "mirrored":
    return tf.distribute.MirroredStrategy(
        gpus or cpus, cross_device_ops=None if gpus else
        tf.distribute.ReductionToOneDevice())
  if name == "one_device":
    return tf.distribute.OneDeviceStrategy((gpus or cpus)[0])
  if len(gpus) > 1:
    return tf.distribute.MirroredStrategy(gpus)
  return tf.distribute.get_strategy()


def _multi_worker_strategy(task: Role, timeout: float) -> tf.distribute.Strategy:
  """MultiWorkerMirroredStrategy once every task of TF_CONFIG has joined, or a
  one-line error after `timeout` seconds (see `trainers.training.watchdog`)."""
  with watchdog.deadline(timeout, task.peers,
                         f"{task.name} ({task.address}) joining its {task.num_workers}-task "
                         "cluster"):
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=task.resolver)


def barrier(strategy: tf.distribute.Strategy):
  """Returns once every worker has called it (an all-reduce of a constant)."""

  @tf.function
  def all_reduce():
    return strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)

  all_reduce()
