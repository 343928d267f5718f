"""What the machine offers for mixed precision, and when a precision is likely to be slow.

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
