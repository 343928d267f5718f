"""The PixelSNAIL type: causal self-attention against a numpy reference, its masks, its
receptive field (one block reaches the whole causal past), its settings and config."""
import math

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config
from pixelcnn_tf.nn.attention import CausalSelfAttention, earlier_mask, own_mask
from pixelcnn_tf.config import load_config
from pixelcnn_tf.errors import ConfigError
from pixelcnn_tf.models import build_model, count_parameters
from helpers import raster_jacobian


def test_masks_by_hand():
    np.testing.assert_array_equal(earlier_mask(3), [[0, 0, 0], [1, 0, 0], [1, 1, 0]])
    np.testing.assert_array_equal(own_mask(3), [[1, 0, 0], [1, 1, 0], [1, 1, 1]])
    np.testing.assert_array_equal(own_mask(1), [[1]])


def one_by_one(conv, masked=True):
    kernel = conv.masked_kernel() if masked else conv.kernel
    return kernel.numpy()[0, 0], conv.bias.numpy()


def attention_reference(att, a, x):
    """The attention written out with loops: query (p, g) of head h sees the earlier
    positions' keys (from the input *and* the image there) and the keys of its own
    pixel's colour groups c <= g; softmax over exactly those."""
    batch, height, width, _ = a.shape
    g, n, d = att.n_colors, att.num_heads, att.attention_dim
    length = height * width
    flat_a, flat_x = a.reshape(batch, length, -1), x.reshape(batch, length, -1)

    def project(values, conv, masked=True):
        kernel, bias = one_by_one(conv, masked)
        return values @ kernel + bias

    q = project(flat_a, att.query).reshape(batch, length, g, n, d)
    k_own = project(flat_a, att.key).reshape(batch, length, g, n, d)
    v_own = project(flat_a, att.value).reshape(batch, length, g, n, d)
    kv = project(np.concatenate([flat_a, flat_x], -1), att.earlier, masked=False)
    k_prev = kv[..., :n * d].reshape(batch, length, n, d)
    v_prev = kv[..., n * d:].reshape(batch, length, n, d)
    out = np.zeros((batch, length, g, n, d))
    for b in range(batch):
        for p in range(length):
            for group in range(g):
                for h in range(n):
                    keys = [k_prev[b, m, h] for m in range(p)]
                    keys += [k_own[b, p, c, h] for c in range(group + 1)]
                    vals = [v_prev[b, m, h] for m in range(p)]
                    vals += [v_own[b, p, c, h] for c in range(group + 1)]
                    logits = np.array([q[b, p, group, h] @ k for k in keys]) / math.sqrt(d)
                    w = np.exp(logits - logits.max())
                    out[b, p, group, h] = (w / w.sum()) @ np.array(vals)
    kernel, bias = one_by_one(att.output)
    return (out.reshape(batch, length, -1) @ kernel + bias).reshape(batch, height, width, -1)


@pytest.mark.parametrize("colours,heads,dim", [(1, 1, 4), (1, 2, 3), (3, 1, 2), (3, 2, 4)])
def test_attention_matches_numpy(colours, heads, dim, rng):
    tf.random.set_seed(1)
    att = CausalSelfAttention(6, colours, heads, dim)
    a = rng.normal(size=(2, 3, 4, 6)).astype(np.float32)
    x = rng.uniform(-1, 1, size=(2, 3, 4, colours)).astype(np.float32)
    att(tf.constant(a), tf.constant(x))  # creates the variables
    for conv in (att.query, att.key, att.value, att.earlier, att.output):
        conv.bias.assign(rng.normal(size=conv.bias.shape).astype(np.float32))
    got = att(tf.constant(a), tf.constant(x)).numpy()
    np.testing.assert_allclose(got, attention_reference(att, a, x), rtol=1e-4, atol=1e-5)


def test_attention_rejects_bad_settings():
    with pytest.raises(ValueError, match="num_heads and attention_dim"):
        CausalSelfAttention(6, 3, 0, 4)


def snail(channels, output="categorical", shape=(6, 7), **model):
    tf.random.set_seed(0)
    settings = dict(type="pixelsnail", output=output, num_mixtures=2, n_layers=1,
                    kernel_size=3, input_kernel_size=3, num_heads=2, attention_dim=4)
    settings.update(model)
    return build_model(tiny_config(channels, **settings).model, (*shape, channels))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("output", ["categorical", "logistic_mixture"])
def test_one_block_sees_exactly_the_whole_causal_past(channels, output):
    """Every step (the last pixel, interior ones, the first pixels of each row) depends on
    every earlier sub-pixel (categorical) or pixel (mixture) and on nothing else, after
    one block with 3x3 kernels on 6x7 images: attention, not the convolutions, reaches
    the far past, the last colour of every earlier pixel included."""
    model = snail(channels, output)
    jac = raster_jacobian(model, model.image_shape)
    per_step = 1 if output == "categorical" else channels
    past = np.arange(jac.shape[1])[None, :] < np.arange(jac.shape[0])[:, None] * per_step
    assert np.all(jac[~past] == 0.0), "an output depends on the current or a later input"
    missing = np.argwhere(past & (jac == 0.0))
    assert missing.size == 0, f"(step, input) pairs not reached: {missing[:5].tolist()}"


def test_pixelcnn_of_the_same_depth_misses_most_of_the_past():
    """The check above can fail: a one-layer PixelCNN's field is a small window."""
    tf.random.set_seed(0)
    model = build_model(tiny_config(1, type="pixelcnn", n_layers=1, kernel_size=3,
                                    input_kernel_size=3).model, (6, 7, 1))
    jac = raster_jacobian(model, (6, 7, 1))
    assert (jac[-1] != 0).sum() < 10  # the last pixel sees a handful of its 41 earlier ones


def test_class_vectors_enter_every_gate():
    model = snail(3, num_classes=3, n_layers=2, convs_per_block=3)
    model.class_bias.assign(tf.random.normal(model.class_bias.shape))  # zeros at first
    x = tf.random.uniform([2, *model.image_shape])
    a = model(x, tf.constant([0, 0])).numpy()
    b = model(x, tf.constant([0, 2])).numpy()
    assert np.array_equal(a[0], b[0]) and not np.allclose(a[1], b[1])
    layer = model.pixel_layers[0]
    assert len(layer.convs) == 3 and model.class_bias.shape == (3, 2, 4 * 6)


def expected_parameters(h, k, g, n, d, out_dim, blocks, convs, shape, outputs, input_k):
    """The parameter count of a pixelsnail model, written out: ``outputs`` parameters per
    pixel (256·C categorical, P mixture), ``g`` colour groups of the masks."""
    f, channels = 2 * h, shape[-1]
    per_block = (convs * (k * k * f * 2 * f + 2 * f)  # gated convs (2h → 4h)
                 + 3 * (f * g * n * d + g * n * d)  # query, key, value
                 + (f + channels) * 2 * n * d + 2 * n * d  # earlier keys and values
                 + g * n * d * f + f  # output projection
                 + shape[0] * shape[1] * f)  # position embedding
    rest = (input_k ** 2 * channels * f + f  # input conv
            + f * out_dim + out_dim + out_dim * outputs + outputs)  # output layers
    return blocks * per_block + rest


def test_settings_reach_the_layers_and_the_parameter_count():
    model = snail(3, n_layers=2, convs_per_block=1, num_heads=3, attention_dim=5,
                  hidden_dim=6)
    att = model.pixel_layers[1].attention
    assert (att.num_heads, att.attention_dim) == (3, 5)
    assert att.query.kernel.shape == (1, 1, 12, 3 * 3 * 5)  # colour groups of [heads, dim]
    assert att.earlier.kernel.shape == (1, 1, 12 + 3, 2 * 3 * 5)  # [a, image] → k, v
    assert model.pixel_layers[0].position.shape == (6, 7, 12)
    assert count_parameters(model) == expected_parameters(
        6, 3, 3, 3, 5, 12, 2, 1, (6, 7, 3), 3 * 256, 3)


def test_cifar10_config_size():
    cfg = load_config("configs/cifar10_pixelsnail.yml").model
    assert (cfg.n_layers, cfg.convs_per_block, 2 * cfg.hidden_dim) == (12, 4, 256)
    count = expected_parameters(128, 3, 1, 8, 16, 256, 12, 4, (32, 32, 3), 100, 7)
    assert count == 62_302_052  # the figure in the config's header
    model = build_model(cfg, (32, 32, 3))
    assert count_parameters(model) == count


def test_other_types_refuse_the_pixelsnail_keys():
    for key in ("num_heads=2", "attention_dim=8", "convs_per_block=3"):
        with pytest.raises(ConfigError, match=f"model.{key} is not an option of model.type="
                                              f"pixelcnn \\(used by pixelsnail\\)"):
            load_config(None, [f"model.{key}"])
    assert load_config(None, ["model.type=pixelsnail", "model.num_heads=2"]).model.num_heads == 2
    with pytest.raises(ConfigError, match="model.num_heads=0 is out of range"):
        load_config(None, ["model.type=pixelsnail", "model.num_heads=0"])
    with pytest.raises(ConfigError, match="model.dilations=.* is not an option of model.type=pixelsnail"):
        load_config(None, ["model.type=pixelsnail", "model.n_layers=2",
                           "model.dilations=[1, 2]"])
