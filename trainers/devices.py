"""Devices, precision policy and distribution strategy: decided once per run."""

import tensorflow as tf


def split_cpu(count: int):
  """Splits the CPU into `count` logical devices (to exercise multi-device code)."""
  if count > 1:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])


def cpu_has_bf16() -> bool:
  """Whether this CPU has bfloat16 arithmetic (AVX512_BF16 or AMX)."""
  try:
    with open("/proc/cpuinfo") as file:
      flags = file.read()
  except OSError:
    return False
  return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, strategy: str) -> str:
  """The Keras policy for `--precision`; "auto" picks what is fast here.

  Measured on a 2-core AVX512_BF16 CPU, cnn2 trains at 259 img/s in float32,
  401 in mixed_bfloat16 and 62 in mixed_float16 (no fp16 units): so fp16 only on
  GPUs that have tensor cores (compute capability >= 7.0), bf16 on TPUs and on
  CPUs with bf16 instructions, float32 otherwise.
  """
  if precision != "auto":
    return precision
  if strategy == "tpu":
    return "mixed_bfloat16"
  gpus = tf.config.list_physical_devices("GPU")
  if gpus:
    capability = tf.config.experimental.get_device_details(gpus[0]).get(
        "compute_capability", (0, 0))
    return "mixed_float16" if tuple(capability) >= (7, 0) else "float32"
  return "mixed_bfloat16" if cpu_has_bf16() else "float32"


def make_strategy(name: str, tpu: str = "") -> tf.distribute.Strategy:
  """The tf.distribute strategy for `--strategy`.

  "auto" mirrors over all visible GPUs when there are several, else uses the
  default (single-device) strategy. "mirrored" without GPUs mirrors over the
  logical CPU devices (see `split_cpu`).
  """
  if name == "tpu":
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  if name == "multi_worker":
    # Measured with TF 2.21 / Keras 3.15: fit() under MultiWorkerMirroredStrategy
    # fails converting PerReplica batches, as TF's own multi-worker tutorial does.
    raise ValueError(
        "--strategy=multi_worker is not supported yet: Keras 3's Model.fit cannot train "
        "under MultiWorkerMirroredStrategy (keras-team/keras#20585). Use "
        "--strategy=mirrored on one host.")
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
