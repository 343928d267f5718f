"""The real CLIs as subprocesses on tiny data in a temp dir."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import yaml
from tensorboard.backend.event_processing import event_accumulator

from conftest import ROOT
from helpers import run, tiny_config_file
pytestmark = pytest.mark.slow


def tiny_grey_run(tmp_path):
    """(config path, workdir) for a tiny run on 30 random 6x5 grey images."""
    rng = np.random.default_rng(0)
    npz = tmp_path / "tiny.npz"
    np.savez(npz, images=rng.integers(0, 256, (30, 6, 5)).astype(np.uint8))
    return tiny_config_file(tmp_path, npz), str(tmp_path / "run")


def read_events(directory):
    acc = event_accumulator.EventAccumulator(directory, size_guidance={"tensors": 0})
    acc.Reload()
    return acc


def test_train_resume_evaluate_and_tensorboard(tmp_path):
    config, workdir = tiny_grey_run(tmp_path)

    first = run("train.py", "--config", config, "--workdir", workdir)
    assert first.returncode == 0, first.stderr
    assert "new run" in first.stdout and "validation bits/dim" in first.stdout

    second = run("train.py", "--config", config, "--workdir", workdir,
                 "--set", "train.steps=6")
    assert second.returncode == 0, second.stderr
    assert f"resuming {workdir} from step 4" in second.stdout
    assert "step 6)" in second.stdout
    assert "exported a SavedModel" in second.stdout
    assert os.path.exists(os.path.join(workdir, "saved_model", "saved_model.pb"))

    export = run("train.py", "--config", config, "--workdir", workdir, "--export-only")
    assert export.returncode == 0, export.stderr
    assert "exported step 6" in export.stdout

    saved = yaml.safe_load(open(os.path.join(workdir, "config.yml")))
    assert saved["train"]["steps"] == 6

    ev = run("evaluate.py", "--workdir", workdir, "--split", "validation")
    assert ev.returncode == 0, ev.stderr
    assert "bits/dim over 6 images (step 6)" in ev.stdout
    record = json.load(open(os.path.join(workdir, "eval_npz_tiny_validation.json")))
    assert record["num_images"] == 6 and 0 < record["bits_per_dim"] < 10

    other = tmp_path / "other.npz"
    rng = np.random.default_rng(1)
    np.savez(other, images=rng.integers(0, 256, (9, 6, 5, 1)).astype(np.uint8))
    ev = run("evaluate.py", "--workdir", workdir, "--set", "data.dataset=npz",
             "--set", f"data.path={other}", "--samples", "3", "--out",
             str(tmp_path / "s.png"), "--completions", "2", "--completion-images", "3",
             "--completion-out", str(tmp_path / "c.png"), "--set", "sample.method=fast",
             "--eval")
    assert ev.returncode == 0, ev.stderr
    assert "npz all (8-bit):" in ev.stdout and "over 9 images" in ev.stdout
    assert json.load(open(os.path.join(workdir, "eval_npz_other_all.json")))["num_images"] == 9
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote completions of 3 images" in ev.stdout
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"

    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, images=np.zeros((3, 7, 7), np.uint8))
    ev = run("evaluate.py", "--workdir", workdir, "--set", "data.dataset=npz",
             "--set", f"data.path={wrong}")
    assert ev.returncode == 2
    assert "images are [7, 7, 1] but the model was trained on [6, 5, 1]" in ev.stderr

    train_events = read_events(os.path.join(workdir, "train"))
    tags = set(train_events.Tags()["tensors"])
    assert {"bits_per_dim", "learning_rate", "grad_norm", "images_per_sec",
            "input_wait_fraction", "samples"} <= tags
    waits = [float(tf.make_ndarray(e.tensor_proto))
             for e in train_events.Tensors("input_wait_fraction")]
    assert all(0.0 <= w < 1.0 for w in waits)
    steps = [e.step for e in train_events.Tensors("bits_per_dim")]
    assert steps == [2, 4, 6]  # the resumed run continued the step count
    assert [e.step for e in train_events.Tensors("samples")] == [4, 6]
    val_events = read_events(os.path.join(workdir, "validation"))
    assert [e.step for e in val_events.Tensors("bits_per_dim")] == [2, 4, 6]
    assert sorted(os.listdir(os.path.join(workdir, "samples"))) == [
        "step_00000004.png", "step_00000006.png"]


def test_bfloat16_run_is_evaluated_in_float32(tmp_path):
    from pixelcnn_tf.devices import local_precision_warning

    config, workdir = tiny_grey_run(tmp_path)
    result = run("train.py", "--config", config, "--workdir", workdir, "--set",
                 "train.mixed_precision=bfloat16")
    assert result.returncode == 0, result.stderr
    warned = "warning: train.mixed_precision=bfloat16" in result.stderr
    assert warned == (local_precision_warning("bfloat16") is not None)  # depends on the CPU

    exact = run("evaluate.py", "--workdir", workdir, "--split", "validation")
    assert exact.returncode == 0, exact.stderr
    assert "bits/dim over 6 images (step 4)\n" in exact.stdout  # no "bfloat16 arithmetic"
    record = json.load(open(os.path.join(workdir, "eval_npz_tiny_validation.json")))
    assert record["mixed_precision"] == "none"
    fast = run("evaluate.py", "--workdir", workdir, "--split", "validation", "--set",
               "train.mixed_precision=bfloat16")
    assert fast.returncode == 0, fast.stderr
    assert "(step 4, bfloat16 arithmetic)" in fast.stdout
    low = json.load(open(os.path.join(workdir, "eval_npz_tiny_validation.json")))
    assert low["mixed_precision"] == "bfloat16"
    assert abs(low["bits_per_dim"] - record["bits_per_dim"]) < 0.05


# Each raster type once through train.py and evaluate.py (parallel_multiscale: its own CLI
# test in test_parallel_multiscale.py; the multi-scale container: the test below).
@pytest.mark.parametrize("layer_type,output", [
    ("gated_pixelcnn", "categorical"), ("row_lstm", "categorical"),
    ("diagonal_bilstm", "categorical"), ("pixelcnn", "logistic_mixture"),
    ("pixelcnn_pp", "logistic_mixture"), ("pixelsnail", "logistic_mixture")])
def test_every_layer_type_trains_evaluates_and_samples(tmp_path, layer_type, output):
    rng = np.random.default_rng(0)
    npz = tmp_path / "rgb.npz"
    shape = (8, 4, 3) if layer_type == "pixelcnn_pp" else (5, 4, 3)  # pp: multiples of 4
    np.savez(npz, images=rng.integers(0, 256, (20, *shape)).astype(np.uint8))
    config = tiny_config_file(tmp_path, npz)
    workdir = str(tmp_path / "run")
    width = ["--set", "model.hidden_dim=3", "--set", f"model.output={output}", "--set",
             "model.num_mixtures=3"]
    if layer_type == "pixelcnn_pp":  # the container's keys back at their defaults: refused
        width += ["--set", "model.dropout=0.5", "--set", "model.out_dim=64", "--set",
                  "model.input_kernel_size=7"]
    else:
        width += ["--set", "model.out_dim=6"]
    # No sample grids during training (test_train_resume_evaluate_and_tensorboard has
    # them): evaluate.py --samples draws through the same sampler below.
    result = run("train.py", "--config", config, "--workdir", workdir, "--set",
                 f"model.type={layer_type}", "--set", "sample.method=fast", "--set",
                 "train.sample_every=100", *width)
    assert result.returncode == 0, result.stderr
    assert f"new run in {workdir}: {layer_type}" in result.stdout
    ev = run("evaluate.py", "--workdir", workdir, "--samples", "2", "--eval", "--out",
             str(tmp_path / "s.png"))
    assert ev.returncode == 0, ev.stderr
    assert "bits/dim over 20 images" in ev.stdout
    assert (tmp_path / "s.png").exists()
    assert "using the naive sampler" not in ev.stderr  # every type has a fast sampler


def test_multiscale_run_trains_evaluates_exports_and_samples(tmp_path):
    """A multi-scale gated PixelCNN through the CLIs: TensorBoard, SavedModel, samples,
    and evaluate.py's bits/dim = the small network's NLL of x[::2, ::2] + the conditional
    network's NLL of the other pixels, computed here from the restored networks."""
    from pixelcnn_tf.run import load_for_inference
    rng = np.random.default_rng(0)
    npz = tmp_path / "rgb.npz"
    images = rng.integers(0, 256, (20, 6, 4, 3)).astype(np.uint8)
    np.savez(npz, images=images)
    config = tiny_config_file(tmp_path, npz)
    workdir = str(tmp_path / "run")
    result = run("train.py", "--config", config, "--workdir", workdir, "--set",
                 "model.type=gated_pixelcnn", "--set", "model.hidden_dim=3", "--set",
                 "model.out_dim=6", "--set", "model.multiscale={factor: 2}", "--set",
                 "sample.method=fast")
    assert result.returncode == 0, result.stderr
    assert "gated_pixelcnn (multi-scale, factor 2)" in result.stdout
    assert os.path.exists(os.path.join(workdir, "saved_model", "saved_model.pb"))
    assert "samples" in read_events(os.path.join(workdir, "train")).Tags()["tensors"]
    ev = run("evaluate.py", "--workdir", workdir, "--samples", "2", "--eval", "--out",
             str(tmp_path / "s.png"), "--split", "all")
    assert ev.returncode == 0, ev.stderr
    assert "bits/dim over 20 images" in ev.stdout and (tmp_path / "s.png").exists()
    assert "using the naive sampler" not in ev.stderr
    reported = json.load(open(os.path.join(workdir, "eval_npz_rgb_all.json")))["bits_per_dim"]
    model = load_for_inference(workdir).model
    x = images / 255.0
    small = model.small(x[:, ::2, ::2])
    large = model.large(x, context=x[:, ::2, ::2])
    small_nats = model.small.distribution.nll_per_image(small, images[:, ::2, ::2]).numpy()
    per_pixel = model.large.distribution.nll_per_pixel(large, images).numpy()
    off_grid = np.ones((6, 4), bool)
    off_grid[::2, ::2] = False
    nats = small_nats.astype(np.float64).sum() + per_pixel[:, off_grid].astype(np.float64).sum()
    assert reported == pytest.approx(nats / (images.size * np.log(2)), rel=1e-5)


def test_evaluate_with_nothing_to_do_says_so(tmp_path):
    result = run("evaluate.py", "--workdir", str(tmp_path), "--no-eval")
    assert result.returncode == 2
    assert "--no-eval leaves nothing to do: add --samples N or --completions K" in result.stderr


def test_config_error_is_one_line_and_exit_2(tmp_path):
    result = run("train.py", "--config", "configs/quickstart.yml", "--workdir",
                 str(tmp_path / "w"), "--set", "model.typ=pixelcnn")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown config key 'model.typ'; allowed keys in 'model': type, hidden_dim, "
        "out_dim, n_layers, kernel_size, input_kernel_size, num_classes, output, "
        "num_mixtures, dilations, multiscale, dropout, weight_norm, convs_per_block, "
        "num_heads, attention_dim, base_size, base"]


def test_cifar10_offline_is_one_clear_error(tmp_path):
    result = run("train.py", "--config", "config.yml", "--workdir", str(tmp_path / "w"),
                 "--set", f"data.data_dir={tmp_path / 'tfds'}",
                 env={"PIXELCNN_TF_DOWNLOAD_PROBE": "127.0.0.1:9"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error: TFDS could not download cifar10" in result.stderr
    assert "configs/quickstart.yml" in result.stderr


def test_mirrored_two_replicas_match_one_device(tmp_path):
    """MirroredStrategy over 2 logical CPUs gives the losses of one device with the same
    global batch."""
    config, _ = tiny_grey_run(tmp_path)
    common = ["--set", "train.log_every=1", "--set", "train.steps=5"]
    single = run("train.py", "--config", config, "--workdir", str(tmp_path / "one"), *common)
    assert single.returncode == 0, single.stderr
    mirrored = run("train.py", "--config", config, "--workdir", str(tmp_path / "two"), *common,
                   "--set", "train.distribute=mirrored",
                   env={"PIXELCNN_TF_CPU_DEVICES": "2"})
    assert mirrored.returncode == 0, mirrored.stderr
    assert "train.distribute=mirrored: 2 replicas" in mirrored.stdout

    def losses(name):
        events = read_events(os.path.join(str(tmp_path / name), "train"))
        import tensorflow as tf
        return [float(tf.make_ndarray(e.tensor_proto)) for e in events.Tensors("bits_per_dim")]

    one, two = losses("one"), losses("two")
    assert len(one) == 5
    np.testing.assert_allclose(two, one, rtol=1e-4)
    # Each replica's loss and gradients compiled with XLA and recomputed: the same losses.
    compiled = run("train.py", "--config", config, "--workdir", str(tmp_path / "xla"),
                   *common, "--set", "train.distribute=mirrored", "--set",
                   "train.jit_compile=true", "--set", "train.recompute=true",
                   env={"PIXELCNN_TF_CPU_DEVICES": "2"})
    assert compiled.returncode == 0, compiled.stderr
    np.testing.assert_allclose(losses("xla"), one, rtol=1e-4)
    assert os.path.exists(os.path.join(str(tmp_path / "two"), "saved_model", "saved_model.pb"))


def test_two_workers_on_localhost_complete(tmp_path):
    """MultiWorkerMirroredStrategy with two train.py processes talking over loopback."""
    import socket

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    config, workdir = tiny_grey_run(tmp_path)
    workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_CONFIG": json.dumps(tf_config)}
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "train.py"), "--config", config, "--workdir",
             workdir, "--set", "train.distribute=multi_worker"], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    chief_out, worker_out = outputs[0][0], outputs[1][0]
    assert "train.distribute=multi_worker: 2 replicas" in chief_out
    assert "validation bits/dim" in chief_out and "exported a SavedModel" in chief_out
    assert "worker finished at step 4" in worker_out
    assert os.path.exists(os.path.join(workdir, "checkpoints", "checkpoint"))
    steps = [e.step for e in read_events(os.path.join(workdir, "train")).Tensors("bits_per_dim")]
    assert steps == [2, 4]  # summaries written once, by the chief


def test_compress_and_decompress_cli(tmp_path):
    """compress.py / decompress.py on a trained run: .npz and PNG folders back bit for bit,
    and every user error one line, exit 2, with the files already there untouched."""
    config, workdir = tiny_grey_run(tmp_path)
    assert run("train.py", "--config", config, "--workdir", workdir).returncode == 0
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (7, 6, 5)).astype(np.uint8)
    npz = tmp_path / "in.npz"
    np.savez(npz, images=images, labels=np.arange(7))
    packed = str(tmp_path / "in.pxz")

    done = run("compress.py", "--workdir", workdir, str(npz), "-o", packed, "--verify")
    assert done.returncode == 0, done.stderr
    assert "compressed 7 images (6x5x1)" in done.stdout and "verified" in done.stdout
    size = os.path.getsize(packed)
    assert f"{size:,} bytes = {8 * size / images.size:.4f} bits/dim" in done.stdout
    back = run("decompress.py", "--workdir", workdir, packed, "-o", str(tmp_path / "o.npz"))
    assert back.returncode == 0, back.stderr
    with np.load(tmp_path / "o.npz") as f:
        np.testing.assert_array_equal(f["images"], images[..., None])
        np.testing.assert_array_equal(f["labels"], np.arange(7))
    # Trained on, the run still decodes the file with the checkpoint that wrote it.
    assert "needs checkpoint ckpt-4" in done.stdout
    assert run("train.py", "--config", config, "--workdir", workdir,
               "--set", "train.steps=6").returncode == 0
    later = run("decompress.py", "--workdir", workdir, packed, "-o", str(tmp_path / "l.npz"))
    assert later.returncode == 0 and "decoding with ckpt-4" in later.stdout, later.stderr
    with np.load(tmp_path / "l.npz") as f:
        np.testing.assert_array_equal(f["images"], images[..., None])

    pngs = tmp_path / "pngs"  # a folder of PNGs back to a folder with the same names
    pngs.mkdir()
    for i, image in enumerate(images[:3]):
        (pngs / f"digit_{i}.png").write_bytes(tf.io.encode_png(image[..., None]).numpy())
    assert run("compress.py", "--workdir", workdir, str(pngs), "-o",
               str(tmp_path / "p.pxz")).returncode == 0
    assert run("decompress.py", "--workdir", workdir, str(tmp_path / "p.pxz"), "-o",
               str(tmp_path / "pngs_out")).returncode == 0
    for i in range(3):
        name = f"digit_{i}.png"
        decoded = tf.io.decode_png((tmp_path / "pngs_out" / name).read_bytes()).numpy()
        np.testing.assert_array_equal(decoded[..., 0], images[i])

    def fails(script, *args, message):
        before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()
                  and "run" not in p.parts}
        result = run(script, "--workdir", workdir, *args)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.stderr
        after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()
                 and "run" not in p.parts}
        assert after == before  # nothing lost, nothing half-written

    fails("compress.py", str(npz), "-o", packed, message="exists; choose another name or "
                                                          "add --force")
    fails("decompress.py", packed, "-o", str(tmp_path / "o.npz"), message="add --force")
    fails("decompress.py", str(tmp_path / "p.pxz"), "-o", str(tmp_path / "pngs_out"),
          message="already holds digit_0.png and 2 more")
    truncated = tmp_path / "cut.pxz"
    truncated.write_bytes(open(packed, "rb").read()[:-9])
    fails("decompress.py", str(truncated), "-o", str(tmp_path / "x.npz"),
          message=f"{truncated} is truncated")
    fails("decompress.py", str(npz), "-o", str(tmp_path / "x.npz"),
          message="is not a pixelcnn_tf compressed file")
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, images=np.zeros((2, 5, 5), np.uint8))
    fails("compress.py", str(wrong), "-o", str(tmp_path / "w.pxz"),
          message="images are 5x5x1 but the model takes 6x5x1")
    other = str(tmp_path / "other")  # another model: the same config, another seed
    assert run("train.py", "--config", config, "--workdir", other, "--set", "train.seed=1",
               "--set", "train.steps=2").returncode == 0
    before = {p: p.read_bytes() for p in tmp_path.glob("*.pxz")}
    result = run("decompress.py", "--workdir", other, packed, "-o", str(tmp_path / "y.npz"))
    assert result.returncode == 2 and "compressed with another model" in result.stderr
    assert not (tmp_path / "y.npz").exists()
    assert {p: p.read_bytes() for p in tmp_path.glob("*.pxz")} == before
