"""oneDNN, forced on, on any CPU. TensorFlow turns oneDNN on by default only on some CPUs
(those with AVX-512 here), and its graph rewrites fuse ops: a pad into the convolution
that reads it, a bias into its convolution. Two things broke only where it was on: a
kernel that waited for the padded input made the fused convolution wait for itself
(PixelCNN++'s recomputed step: "nodes in a cycle"), and a fused convolution gave an empty
batch the wrong shape (the SavedModel's log_prob). This runs those paths for every type in
a fresh process with ``TF_ENABLE_ONEDNN_OPTS=1``, so a CPU where oneDNN is off by default
still runs them."""
import textwrap

from helpers import run_code
from test_export import EXPORTED

SCRIPT = textwrap.dedent("""
    import tempfile
    import numpy as np
    import tensorflow as tf
    from tensorflow.python.util import _pywrap_util_port
    assert _pywrap_util_port.IsMklEnabled(), "TF_ENABLE_ONEDNN_OPTS=1 did not turn oneDNN on"
    from conftest import tiny_config
    from test_export import EXPORTED, exported_shape
    from pixelcnn_tf.export import ExportModule
    from pixelcnn_tf.trainer import Trainer

    for layer_type, num_classes, keys in EXPORTED:
        shape = exported_shape(layer_type, keys)
        config = tiny_config(3, num_classes=num_classes, type=layer_type, **keys)
        config.train.recompute = True
        trainer = Trainer(config, tempfile.mkdtemp(), shape)
        images = np.random.default_rng(0).integers(0, 256, (3, *shape)).astype(np.uint8)
        labels = tf.constant([0, 1, 1])
        loss = trainer.train_step(tf.constant(images), labels)[0]  # the graph step
        assert np.isfinite(float(loss)), layer_type
        module = ExportModule(trainer.model, config)
        for n in (3, 0):
            given = [labels[:n]] if num_classes else []
            bits = module.log_prob(tf.constant(images[:n]), *given)["bits_per_dim"]
            assert bits.shape == (n,), (layer_type, n, bits.shape)
        print(layer_type, "ok", flush=True)
    print(f"{len(EXPORTED)} types", flush=True)
""")


def test_recomputed_steps_and_empty_batches_with_onednn_on():
    result = run_code(SCRIPT, env={"TF_ENABLE_ONEDNN_OPTS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert f"{len(EXPORTED)} types" in result.stdout, result.stdout
