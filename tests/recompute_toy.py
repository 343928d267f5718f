"""Toy blocks for tests/test_recompute.py (imported there and by its subprocess): two
streams of N blocks; a block of the second stream also reads the first stream's output
(as PixelCNN++'s ul stream reads u). A block keeps about 16 activation-sized tensors for
its backward pass (a 2x-wide tanh, a 4x-wide convolution output and its tanh, ...); its
output, one."""
import tensorflow as tf

from pixelcnn_tf.nn.layers import run_block

B, H, C, N = 8, 32, 64, 8


class Block(tf.Module):
    def __init__(self, seed):
        self.k1 = tf.Variable(tf.random.normal([3, 3, 2 * C, 4 * C], 0, 0.05, seed=seed))
        self.k2 = tf.Variable(tf.random.normal([3, 3, 4 * C, C], 0, 0.05, seed=seed + 1))

    def __call__(self, x, aux=None):
        h = x if aux is None else x + aux
        h = tf.tanh(tf.concat([h, -h], -1))
        h = tf.tanh(tf.nn.conv2d(h, self.k1, 1, "SAME"))
        return x + tf.tanh(tf.nn.conv2d(h, self.k2, 1, "SAME"))


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
