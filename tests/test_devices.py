import pytest

from pixelcnn_tf.devices import (cpu_description, cpu_info, local_precision_warning,
                                  precision_warning)

CPUINFO = """processor\t: 0
model name\t: Test Xeon(R) CPU
flags\t\t: fpu sse avx512f avx512_bf16 amx_bf16 amx_tile
processor\t: 1
model name\t: Test Xeon(R) CPU
flags\t\t: fpu sse avx512f avx512_bf16 amx_bf16 amx_tile
"""


def test_cpu_info_reads_model_and_flags(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    model, flags = cpu_info(str(path))
    assert model == "Test Xeon(R) CPU"
    assert {"avx512_bf16", "amx_bf16", "fpu"} <= flags
    assert "bf16 features: avx512_bf16, amx_bf16" in cpu_description(str(path))


def test_cpu_info_without_proc(tmp_path):
    assert cpu_info(str(tmp_path / "missing")) == ("unknown CPU", set())
    assert "bf16 features: none" in cpu_description(str(tmp_path / "missing"))


def test_float32_never_warns():
    assert precision_warning("none", [], set()) is None
    assert precision_warning("none", [(6, 0)], set()) is None


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_recent_gpus_do_not_warn(precision):
    assert precision_warning(precision, [(8, 0), (9, 0)], set()) is None


def test_old_gpus_warn_and_name_the_capability():
    msg = precision_warning("bfloat16", [(7, 0), (8, 6)], set())
    assert "compute capability 8.0" in msg and "found 7.0" in msg and "8.6" not in msg
    assert "train.mixed_precision=none" in msg
    assert precision_warning("float16", [(7, 0)], set()) is None
    assert "found 6.1" in precision_warning("float16", [(6, 1)], set())


def test_cpu_bfloat16_needs_amx():
    assert precision_warning("bfloat16", [], {"avx512_bf16", "amx_bf16"}) is None
    msg = precision_warning("bfloat16", [], {"avx512_bf16"})
    assert "without AMX-BF16" in msg and "train.mixed_precision=none" in msg


def test_cpu_float16_always_warns():
    msg = precision_warning("float16", [], {"amx_bf16", "amx_fp16"})
    assert "no fast float16 CPU kernels" in msg


def test_local_warning_runs_here():
    # This machine has no GPU in CI; the answer depends on its CPU, but must be a
    # sentence or None, and float32 is always fine.
    assert local_precision_warning("none") is None
    msg = local_precision_warning("float16")
    assert msg is None or "float16" in msg
