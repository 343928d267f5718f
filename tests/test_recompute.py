"""``nn.layers.recompute_grad`` (``train.recompute``): the same gradients as keeping the
activations, and one block's rerun alive at a time. The model types' recomputed steps are
checked in test_conformance.py; here the toy blocks of recompute_toy.py show the
ordering itself."""
import json
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import recompute_toy
from helpers import run_code

MEMORY = textwrap.dedent("""
    import json
    import tensorflow as tf
    from recompute_toy import C, P, loss_and_grads
    step = tf.function(lambda x: loss_and_grads(x, True)[1])
    x = tf.random.normal([P, C], seed=0)
    step.get_concrete_function(x)
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    peaks = []
    for _ in range(3):
        tf.config.experimental.reset_memory_stats("CPU:0")
        [g.numpy() for g in step(x)]
        peak = tf.config.experimental.get_memory_info("CPU:0")["peak"] - before
        peaks.append(peak / (P * C * 4))
    print(json.dumps(peaks))
""")


@pytest.mark.parametrize("graph", [False, True])
def test_recomputed_gradients_equal_the_kept_ones(graph):
    x = tf.random.normal([128, recompute_toy.C], seed=1)
    run = recompute_toy.loss_and_grads
    run = tf.function(run, autograph=False) if graph else run
    loss, grads = run(x, False)
    loss_again, grads_again = run(x, True)
    np.testing.assert_allclose(loss_again.numpy(), loss.numpy(), rtol=1e-6)
    for g, h in zip(grads, grads_again):
        np.testing.assert_allclose(h.numpy(), g.numpy(), rtol=1e-4, atol=1e-7)


def test_one_rerun_is_alive_at_a_time():
    """Peak tensor memory of a recomputed tf.function step, from TensorFlow's own CPU
    allocator statistics (``TF_CPU_ALLOCATOR_USE_BFC``, in a fresh process), in units of
    one activation: the 2N block outputs kept for the reruns, plus at most about one
    block's rerun (16) and its gradients. Measured 28 to 33, oneDNN on or off; with
    ``tf.recompute_grad`` in its place the same step peaked at 92 to 103 (reruns of
    several blocks alive at once), and at 123 to 159 with nothing recomputed."""
    result = run_code(MEMORY, env={"TF_CPU_ALLOCATOR_USE_BFC": "true"})
    assert result.returncode == 0, result.stderr[-3000:]
    peaks = json.loads(result.stdout.strip().splitlines()[-1])
    assert max(peaks) <= 2 * recompute_toy.N + 24, peaks
