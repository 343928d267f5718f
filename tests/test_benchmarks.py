"""The benchmark scripts run (with small settings) and print their figures."""
import importlib
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def benchmark_module(name):
    """A benchmark script imported as a module (benchmarks/ on the path, as when run)."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    return importlib.import_module(name)


def run_benchmark(name, *args):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", name), *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_train_throughput_prints_rates_and_ratios():
    """A small pixelcnn (the reference exists for that type; the default is config.yml)."""
    out = run_benchmark("train_throughput.py", "--config", "configs/quickstart.yml",
                        "--set", "model.hidden_dim=3", "--set", "model.out_dim=6",
                        "--rounds", "1", "--steps", "1", "--batch-size", "2")
    assert "bf16 features:" in out
    for name in ("reference (Keras, kernel*mask, fp32)", "ours (fp32)", "ours (bfloat16)"):
        line = next(line for line in out.splitlines() if name in line)
        rate, ratio = re.search(r"([\d.]+) images/s\s+([\d.]+)x the reference", line).groups()
        assert float(rate) > 0 and float(ratio) > 0
    assert "1.00x the reference" in next(line for line in out.splitlines()
                                         if "reference (" in line)


def test_train_throughput_of_any_config_is_relative_to_our_float32():
    """Types other than pixelcnn have no tutorial reference: float32 is the baseline;
    --jit-compile times every precision's compiled step too."""
    out = run_benchmark("train_throughput.py", "--config", "configs/quickstart_pixelcnn_pp.yml",
                        "--set", "model.hidden_dim=4", "--rounds", "1", "--steps", "1",
                        "--batch-size", "2", "--jit-compile", "--precisions", "none")
    assert "reference" not in out
    assert "pixelcnn_pp (configs/quickstart_pixelcnn_pp.yml --set model.hidden_dim=4)" in out
    assert len(re.findall(r"parameters: [\d,]+", out)) == 1
    rates = dict(re.findall(r"ours \(([\w, ]+)\)\s+[\d.]+ images/s\s+([\d.]+)x ours \(fp32\)",
                            out))
    assert set(rates) == {"fp32", "fp32, compiled"}, out
    assert rates["fp32"] == "1.00" and all(float(r) > 0 for r in rates.values())


def test_train_startup_prints_both_optimizers_and_the_ratio():
    out = run_benchmark("train_startup.py", "--config", "configs/quickstart.yml", "--set",
                        "model.hidden_dim=3", "--set", "model.out_dim=6", "--set",
                        "model.n_layers=1", "--rounds", "1", "--batch-size", "2")
    lines = {name: line for line in out.splitlines()
             for name in ("Keras's Adam", "trainer.Adam") if line.strip().startswith(name)}
    assert set(lines) == {"Keras's Adam", "trainer.Adam"}, out
    assert lines["Keras's Adam"].endswith("1.00x Keras's")
    nodes = {k: int(re.search(r"([\d,]+) graph nodes", v).group(1).replace(",", ""))
             for k, v in lines.items()}
    assert nodes["trainer.Adam"] < nodes["Keras's Adam"]  # one op per variable, not ~40
    assert re.search(r"configs/quickstart.yml .*batch 2: \d+ trainable variables", out)


def test_input_pipeline_prints_rates_and_ratios():
    out = run_benchmark("input_pipeline.py", "--batches", "5", "--images", "100")
    ratios = re.findall(r"pipeline / training = ([\d,]+)x", out)
    assert len(ratios) == 2 and all(int(r.replace(",", "")) > 0 for r in ratios)


def test_sampling_prints_speed_up_in_several_precisions():
    """Both precisions at the quickstart size (the default adds the CIFAR-10 size)."""
    out = run_benchmark("sampling.py", "--n-images", "1", "--sizes", "quickstart",
                        "--precisions", "none,bfloat16")
    assert "CIFAR-10" not in out
    assert len(re.findall(r"speed-up fast / naive: [\d.]+x", out)) == 2
    assert out.count("bfloat16 layers") == 1


def test_sampling_step_cost_by_image_size():
    out = run_benchmark("sampling.py", "--n-images", "1", "--types", "pixelcnn,pixelsnail",
                        "--step-cost-sizes", "4,6")
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("pixel")]
    assert [r[0] for r in rows] == ["pixelcnn", "pixelsnail"]
    assert all(len(r) == 4 and r[-1].endswith("x") and float(r[1]) > 0 for r in rows), out


def test_sampling_growth_by_image_size():
    """The growth table: a time per size for each type, its growth, and the time over
    the first type's (the parallel model needs sizes of its 4x4 base times 2^K)."""
    out = run_benchmark("sampling.py", "--n-images", "1", "--types",
                        "parallel_multiscale,gated_pixelcnn", "--growth-sizes", "8,16",
                        "--channels", "1")
    rows = [line.split() for line in out.splitlines()
            if line.strip().startswith(("parallel_multiscale ", "gated_pixelcnn "))
            and "s (" in line]
    assert [r[0] for r in rows] == ["parallel_multiscale", "gated_pixelcnn"], out
    assert all(r[-1].endswith("x") and float(r[2]) > 0 for r in rows), out


def test_attention_flops_count_every_causal_pair():
    """The sampling benchmark's FLOP floor counts attention: 4·heads·dim per (query,
    key) pair, the query's own position included, per colour group."""
    flops_per_image = benchmark_module("sampling").flops_per_image
    from conftest import tiny_config
    from pixelcnn_tf.models import build_model
    cfg = tiny_config(3, type="pixelsnail", num_heads=2, attention_dim=5).model
    with_attention = flops_per_image(build_model(cfg, (4, 3, 3)))
    for layer in (model := build_model(cfg, (4, 3, 3))).pixel_layers:
        layer.attention.num_heads = 0  # the convolutions alone
    assert with_attention - flops_per_image(model) == 2 * 4 * 2 * 5 * 3 * (12 * 13 // 2)


def test_attention_memory_prints_training_memory_and_ratio():
    out = run_benchmark("attention_memory.py", "--config", "configs/quickstart_pixelsnail.yml",
                        "--baseline", "configs/quickstart_gated_pixelcnn.yml",
                        "--batch-size", "2", "--steps", "1", "--set", "model.hidden_dim=3",
                        "--set", "model.out_dim=6", "--set", "model.n_layers=1")
    lines = [line for line in out.splitlines() if "MiB" in line]
    assert len(lines) == 2 and "1.00x the baseline" in lines[0], out
    assert "(pixelsnail" in lines[1] and re.search(r"attention weights computed: \d+ MiB",
                                                   lines[1])


def test_quality_per_compute_prints_held_out_bits_per_dim():
    """Our side only (TFP is a benchmark-only dependency, benchmarks/requirements.txt)."""
    out = run_benchmark("quality_per_compute.py", "--sides", "ours", "--budget-s", "2",
                        "--datasets", "mnist5k", "--n-samples", "0")
    line = next(line for line in out.splitlines() if line.strip().startswith("ours"))
    bits = float(re.search(r"([\d.]+) bits/dim", line).group(1))
    assert 0 < bits < 8.5 and "554,240 parameters" in line  # 2 blocks per stage, F = 24


def test_quality_per_compute_gives_both_sides_the_same_split():
    """The images both sides train on and score (TFP's side reads them through ``load``,
    which takes our data settings, not our model's)."""
    train, held_out = benchmark_module("quality_per_compute").load("mnist5k")
    assert train.shape == (4500, 28, 28, 1) and held_out.shape == (500, 28, 28, 1)


def test_compression_prints_the_model_codec_against_its_bits_per_dim():
    """The model codec only (imagecodecs is a benchmark-only dependency): a tiny run on
    mnist5k, its 500 held-out digits compressed, decoded and compared."""
    out = run_benchmark("compression.py", "--datasets", "mnist5k", "--codecs", "none",
                        "--mnist5k-set", "train.steps=3", "--batch-size", "250")
    row = next(line for line in out.splitlines() if "model codec" in line)
    file_bpd = float(row.split()[-4])  # bits/dim, ratio, encode, decode images/s
    own = float(re.search(r"own bits/dim \(full pass\): ([\d.]+)", out).group(1))
    assert 0 < own < 8.5 and abs(file_bpd / own - 1) < 0.01
    assert "500 held-out 28x28x1 images" in out


def test_equal_time_prints_every_run_and_the_difference(tmp_path):
    out = run_benchmark("equal_time.py", "--budget-s", "1", "--n-samples", "2",
                        "--run", "plain=configs/quickstart_gated_pixelcnn.yml",
                        "--run", "dilated=configs/quickstart_gated_pixelcnn.yml",
                        "--set", "dilated:model.dilations=[1,2,4,8,16]",
                        "--samples-dir", str(tmp_path))
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.strip().startswith(("plain", "dilated"))}
    assert set(rows) == {"plain", "dilated"}, out
    assert rows["plain"][2] == "+0.0000" and "model.dilations=[1,2,4,8,16]" in out
    for name, row in rows.items():
        assert 0 < float(row[1]) < 8.5 and row[3] == "138,816"
        assert (tmp_path / f"mnist5k_{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_equal_time_scores_the_averages_and_initialises_weight_norm(monkeypatch):
    """Runs scored as a user would: with model.weight_norm, g and the biases are
    initialised from data once, before the budget starts, as train.py does; with
    train.ema_decay > 0 the held-out score (and the samples, drawn in the same block) use
    the averages, as evaluate.py does."""
    import numpy as np
    from pixelcnn_tf import trainer as trainer_lib
    seen, ran = [], []  # per evaluation: did the model hold the averages? / init steps
    evaluate = trainer_lib.Trainer.evaluate
    initialize = trainer_lib.Trainer.initialize_from_data

    def recording_evaluate(self, *args, **kwargs):
        seen.append(all(np.array_equal(v.numpy(), s.numpy()) for v, s in
                        zip(self.model.trainable_variables, self.average.shadows)))
        return evaluate(self, *args, **kwargs)

    def recording_initialize(self, *args, **kwargs):
        ran.append(self.step)
        return initialize(self, *args, **kwargs)

    monkeypatch.setattr(trainer_lib.Trainer, "evaluate", recording_evaluate)
    monkeypatch.setattr(trainer_lib.Trainer, "initialize_from_data", recording_initialize)
    result = benchmark_module("equal_time").train_for_budget(
        os.path.join(ROOT, "configs", "quickstart_pixelcnn_pp.yml"),
        ["model.hidden_dim=4", "train.ema_decay=0.5", "model.weight_norm=true"],
        budget=0.2, n_samples=0)
    assert seen == [True] and ran == [0] and 0 < result["bits_per_dim"] < 8.5
    assert np.isnan(result["sample_s"])  # n_samples 0: nothing sampled


def test_receptive_field_of_the_last_pixel(tmp_path):
    """Rates 1, 2, 4, 8, 16 reach every earlier pixel of a 32x32 image from the last one;
    the plain quickstart networks see 80 (pixelcnn) and 89 (gated) of them."""
    out = run_benchmark("receptive_field.py", "--out", str(tmp_path / "field.png"))
    counts = dict(re.findall(r"(\w+)\s+plain\s+(\d+) pixels", out))
    assert counts == {"pixelcnn": "80", "gated_pixelcnn": "89"}
    assert len(re.findall(r"dilated\s+1023 \(100.0%\)", out)) == 2
    assert (tmp_path / "field.png").stat().st_size > 1000


def test_device_check_runs_tiny_within_its_budget():
    """The prepared GPU check at tiny sizes (what it does on a CPU): the device, training
    rates, the projection, and what the budget left out."""
    out = run_benchmark("device_check.py", "--tiny", "--budget-s", "0")  # the first only
    assert out.startswith("device: ")
    assert re.search(r"train configs/cifar10_pixelcnn_pp.yml batch 4 bfloat16 compiled: +"
                     r"[\d.]+ images/s, peak GPU memory (n/a|[\d.]+ GiB)", out), out
    assert re.search(r"projected: 500,000 steps of configs/cifar10_pixelcnn_pp.yml at batch 4: "
                     r"[\d.]+ h", out), out
    assert "skipped (budget spent): config.yml batch 2 bfloat16" in out
    assert re.search(r"device check took \d+ s", out)


def test_train_memory_prints_peaks_ratios_and_fits():
    out = run_benchmark("train_memory.py", "--configs", "config.yml", "--set",
                        "model.hidden_dim=3", "--set", "model.out_dim=6", "--set",
                        "model.n_layers=2", "--batch-sizes", "2,4", "--fits", "16,80")
    lines = re.findall(r"config.yml batch (\d) \((CPU|GPU)\): peak ([\d.]+) GiB plain, "
                       r"([\d.]+) GiB recompute \(([\d.]+)x\)", out)
    assert [line[0] for line in lines] == ["2", "4"], out
    fits = re.findall(r"largest batch \(recompute=(\w+).*: 16 GiB: (\d+), 80 GiB: (\d+)", out)
    assert [f[0] for f in fits] == ["false", "true"], out
    assert all(int(big) >= int(small) for _, small, big in fits)


def test_largest_batch_is_read_off_a_line():
    largest = benchmark_module("train_memory").largest_batch
    gib = 2.0**30
    # 1 GiB fixed + 0.5 GiB per image: 16 GiB holds 30 images.
    assert largest([(2, 2 * gib), (4, 3 * gib)], 16.0) == 30
    assert largest([(2, 2 * gib), (4, 3 * gib)], 0.5) == 0
