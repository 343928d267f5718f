"""Devices, distribution strategies and precision: what the machine offers, which
strategy a run uses, the layers' compute dtype, and when a precision is likely to be slow.
TensorFlow is imported only by the functions that need it (the CLIs report config errors
before it loads).

Measured with ``benchmarks/train_throughput.py`` (CIFAR-10 PixelCNN, batch 16):
bfloat16 trained 1.74x faster than float32 on a 2-core Xeon with AMX-BF16, but 0.6-0.75x as fast
on a 2-core Xeon with AVX512-BF16 and no AMX; float16 ran at 0.11x on CPU (no fast float16
CPU kernels). On GPUs, bfloat16 needs compute capability 8.0 (Ampere) or newer for fast
kernels and float16 7.0 (Volta) or newer for tensor cores.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional, Sequence, Set, Tuple

# Smallest GPU compute capability with fast kernels for each low precision.
GPU_MIN_CAPABILITY = {"bfloat16": (8, 0), "float16": (7, 0)}


def cpu_info(path: str = "/proc/cpuinfo") -> Tuple[str, Set[str]]:
    """(CPU model name, set of feature flags), from ``/proc/cpuinfo`` on Linux; ("unknown
    CPU", empty set) where it cannot be read."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return "unknown CPU", set()
    model = next((line.split(":", 1)[1].strip() for line in lines
                  if line.startswith("model name")), "unknown CPU")
    flags = next((line.split(":", 1)[1].split() for line in lines
                  if line.startswith("flags")), [])
    return model, set(flags)


def cpu_description(path: str = "/proc/cpuinfo") -> str:
    """One line: CPU model, core count, and the bfloat16 features TensorFlow can use."""
    model, flags = cpu_info(path)
    features = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f"{model}, {os.cpu_count()} cores, bf16 features: {', '.join(features) or 'none'}"


def precision_warning(precision: str, gpu_capabilities: Sequence[Tuple[int, int]],
                      cpu_flags: Iterable[str]) -> Optional[str]:
    """A sentence explaining why ``train.mixed_precision=precision`` will probably be slower
    than float32 on this hardware, or None when it should help (or is float32).

    ``gpu_capabilities``: the compute capability of each GPU training will use (empty on a
    CPU-only machine); ``cpu_flags``: the CPU's feature flags (see ``cpu_info``).
    """
    if precision == "none":
        return None
    advice = "set train.mixed_precision=none for float32"
    if gpu_capabilities:
        need = GPU_MIN_CAPABILITY[precision]
        old = [c for c in gpu_capabilities if tuple(c) < need]
        if not old:
            return None
        got = ", ".join(f"{a}.{b}" for a, b in old)
        return (f"train.mixed_precision={precision} needs GPUs of compute capability "
                f"{need[0]}.{need[1]} or newer for fast kernels, but found {got}: it will "
                f"probably be slower than float32; {advice}")
    if precision == "float16":
        return ("train.mixed_precision=float16 on a CPU-only machine: TensorFlow has no fast "
                "float16 CPU kernels (0.11x the float32 speed measured); " + advice +
                ", or bfloat16 on a CPU with AMX-BF16")
    if "amx_bf16" not in set(cpu_flags):
        return ("train.mixed_precision=bfloat16 on a CPU without AMX-BF16: bfloat16 matrix "
                "products are slower than float32 there (0.6-0.75x the float32 speed measured on "
                "an AVX512-BF16 Xeon; 1.74x with AMX); " + advice)
    return None


def local_precision_warning(precision: str) -> Optional[str]:
    """``precision_warning`` for this machine's GPUs (or, without GPUs, its CPU)."""
    import tensorflow as tf

    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        capabilities.append(tuple(details.get("compute_capability", (0, 0))))
    return precision_warning(precision, capabilities, cpu_info()[1])


PRECISIONS = ("none", "bfloat16", "float16")  # train.mixed_precision


def compute_dtype(mixed_precision: str):
    """``train.mixed_precision`` (none, bfloat16, float16) → the layers' compute dtype."""
    import tensorflow as tf
    return {"none": tf.float32, "bfloat16": tf.bfloat16, "float16": tf.float16}[mixed_precision]


def use_jit_compile(setting: str) -> bool:
    """``train.jit_compile`` (auto, true, false) → whether the training step is compiled
    with XLA. ``auto``: on GPUs, where fusing the many small element-wise ops pays; not on
    CPUs, where it measured no faster (benchmarks/train_throughput.py, docs/training.md)."""
    if setting == "auto":
        import tensorflow as tf
        return bool(tf.config.list_physical_devices("GPU"))
    return setting == "true"


def make_strategy(name: str):
    """``none``: the default (one device). ``mirrored``: MirroredStrategy over every local
    GPU, or over the logical CPUs when there is no GPU (PIXELCNN_TF_CPU_DEVICES=N makes N).
    ``multi_worker``: MultiWorkerMirroredStrategy over the machines of ``TF_CONFIG``."""
    import tensorflow as tf
    from pixelcnn_tf.errors import ConfigError
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("train.distribute=multi_worker needs TF_CONFIG describing the "
                              "workers (see the README), or use train.distribute=mirrored")
        check_tf_config(os.environ["TF_CONFIG"])
        return tf.distribute.MultiWorkerMirroredStrategy()
    devices = ([d.name for d in tf.config.list_logical_devices("GPU")]
               or [d.name for d in tf.config.list_logical_devices("CPU")])
    return tf.distribute.MirroredStrategy(devices)


def check_tf_config(text: str) -> None:
    """TF_CONFIG must be JSON with a cluster of address lists and a task naming one of
    them; a ConfigError names what is wrong (TensorFlow raises a traceback)."""
    import json
    from pixelcnn_tf.errors import ConfigError
    example = ('e.g. {"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": '
               '{"type": "worker", "index": 0}}')
    try:
        spec = json.loads(text)
        cluster, task = spec["cluster"], spec["task"]
        jobs = cluster[task["type"]]
        index = task["index"]
        valid = (isinstance(jobs, list) and isinstance(index, int)
                 and not isinstance(index, bool) and 0 <= index < len(jobs))
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise ConfigError(f"TF_CONFIG={text[:60]!r} is not a valid cluster description: it "
                          f"must be JSON whose task type and index name one of its workers; "
                          f"{example}")


def is_chief_worker(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "chief" or (
        not has_chief and resolver.task_type == "worker" and resolver.task_id == 0)

