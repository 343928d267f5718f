"""Toy blocks for tests/test_recompute.py (imported there and by its subprocess): two
streams of N blocks; a block of the second stream also reads the first stream's output
(as PixelCNN++'s ul stream reads u). A block keeps about 16 activation-sized tensors for
its backward pass (a 2x-wide tanh, a 4x-wide product and its tanh, ...); its output, one.
Matrix products, not convolutions: a CPU convolution's own workspace (im2col without
oneDNN) would blur what the ordering saves."""
import tensorflow as tf

from pixelcnn_tf.nn.layers import run_block

P, C, N = 8 * 32 * 32, 64, 8  # positions, channels, blocks per stream


class Block(tf.Module):
    def __init__(self, seed):
        self.k1 = tf.Variable(tf.random.normal([2 * C, 4 * C], 0, 0.05, seed=seed))
        self.k2 = tf.Variable(tf.random.normal([4 * C, C], 0, 0.05, seed=seed + 1))

    def __call__(self, x, aux=None):
        h = x if aux is None else x + aux
        h = tf.tanh(tf.concat([h, -h], -1))
        h = tf.tanh(tf.matmul(h, self.k1))
        return x + tf.tanh(tf.matmul(h, self.k2))


first = [Block(2 * i) for i in range(N)]
second = [Block(100 + 2 * i) for i in range(N)]
variables = [v for block in first + second for v in block.trainable_variables]


def loss_and_grads(x, recompute):
    with tf.GradientTape() as tape:
        u = v = x
        for a, b in zip(first, second):
            u = run_block(a, u, recompute=recompute)
            v = run_block(b, v, u, recompute=recompute)
        loss = tf.reduce_mean(u * v)
    return loss, tape.gradient(loss, variables)
