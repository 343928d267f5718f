import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config
from pixelcnn_tf.models import build_model, count_parameters, pixel_layer_types

from helpers import assert_causal_without_blind_spots, raster_jacobian  # noqa: E402

PIXEL_LAYERS = pixel_layer_types()


# Causality of every type, output and colour count: test_conformance.py.


@pytest.mark.parametrize("layer_type", ["pixelcnn", "gated_pixelcnn"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("output", ["categorical", "logistic_mixture"])
@pytest.mark.parametrize("dilations", ["[1, 4]"])
def test_dilated_models_are_causal(layer_type, channels, output, dilations):
    """Dilated masks keep the R|G|B order exactly (untrained models, 6x5 images: rates
    up to 4 read past the edges; rates [2, 3]: test_conformance.py)."""
    tf.random.set_seed(0)
    shape = (6, 5, channels)
    model = build_model(tiny_config(channels, type=layer_type, output=output,
                                    num_mixtures=2, dilations=dilations).model, shape)
    jac = raster_jacobian(model, shape)
    assert_causal_without_blind_spots(jac, 1 if output == "categorical" else channels)


def pp_config(channels, output="logistic_mixture", **kw):
    return tiny_config(channels, type="pixelcnn_pp", output=output,
                       num_mixtures=2, hidden_dim=4, n_layers=1, **kw).model


@pytest.mark.parametrize("channels,output,weight_norm", [
    (1, "logistic_mixture", False), (3, "logistic_mixture", False), (1, "categorical", False),
    (3, "logistic_mixture", True)])
@pytest.mark.parametrize("num_classes", [0, 2])
def test_pixelcnn_pp_is_causal_from_the_first_step(channels, output, weight_norm,
                                                   num_classes):
    """An untrained PixelCNN++ (three resolutions; weight-normalised: just initialised
    from data): the parameters of pixel (i, j) depend on every pixel before it (no blind
    spot) and on nothing from (i, j) on."""
    tf.random.set_seed(0)
    shape = (8, 8, channels)
    model = build_model(pp_config(channels, output, num_classes=num_classes,
                                  weight_norm=weight_norm), shape)
    if weight_norm:
        model.initialize_from_data(tf.random.uniform([4, *shape]),
                                   tf.constant([0, 1, 0, 1]) if num_classes else None)
    labels = None
    if num_classes:
        for block in model.submodules:
            if getattr(block, "class_vector", None) is not None:
                block.class_vector.assign(tf.random.normal(block.class_vector.shape))
        labels = tf.constant([1])
    jac = raster_jacobian(model, shape, labels=labels, n_images=4)
    assert_causal_without_blind_spots(jac, channels)


def test_pixelcnn_pp_paper_size_and_dropout():
    from pixelcnn_tf.config import load_config
    cfg = load_config("configs/cifar10_pixelcnn_pp.yml").model
    assert (cfg.hidden_dim * 2, cfg.n_layers, cfg.num_mixtures, cfg.dropout,
            cfg.weight_norm) == (160, 5, 10, 0.5, True)
    model = build_model(cfg, (32, 32, 3))
    assert count_parameters(model) == PIXELCNN_PP_CIFAR10_PARAMETERS  # stated in the README
    x = tf.random.uniform([2, 32, 32, 3])
    a, b = model(x, training=True), model(x, training=True)
    assert not np.allclose(a.numpy(), b.numpy())  # dropout while training
    np.testing.assert_array_equal(model(x).numpy(), model(x).numpy())  # none otherwise


PIXELCNN_PP_CIFAR10_PARAMETERS = 53_659_080


def test_pixelcnn_pp_shapes_and_errors():
    model = build_model(pp_config(3), (8, 12, 3))
    assert model(tf.zeros([2, 8, 12, 3])).shape == (2, 8, 12, 20)  # 10 parameters x 2
    assert model.distribution.groups == 1
    with pytest.raises(ValueError, match="multiples of 4"):
        build_model(pp_config(3), (8, 10, 3))
    grey = build_model(pp_config(1, "categorical"), (8, 12, 1))
    assert grey(tf.zeros([2, 8, 12, 1])).shape == (2, 8, 12, 1, 256)
    assert (grey.distribution.name, grey.distribution.groups) == ("categorical", 1)
    with pytest.raises(ValueError, match="a categorical output needs one colour"):
        build_model(pp_config(3, "categorical"), (8, 12, 3))


def test_weight_normalised_layers_match_numpy_and_initialise_from_data(rng):
    """kernel = g·v/‖v‖ with the norm over every axis but the output channel's (the last
    for convolutions and 1x1 layers, axis 2 for the transposed convolution); the
    data-dependent call gives every output channel mean 0 and standard deviation
    init_scale on its batch, and later calls compute the same function."""
    from pixelcnn_tf.nn.shifted import Dense, ShiftedConv2D, ShiftedDeconv2D
    x = tf.constant(rng.normal(3.0, 2.0, size=(4, 6, 8, 5)).astype(np.float32))
    for layer, out_axis in [
            (ShiftedConv2D(7, (2, 3), False, init_scale=0.1, weight_norm=True), 3),
            (ShiftedConv2D(7, (2, 2), True, stride=2, weight_norm=True), 3),
            (ShiftedDeconv2D(7, True, weight_norm=True), 2), (Dense(7, weight_norm=True), 1)]:
        layer(x)  # makes the variables
        scale = rng.uniform(0.5, 2.0, 7).astype(np.float32)
        layer.scale.assign(scale)
        v = layer.direction.numpy()
        axes = tuple(a for a in range(v.ndim) if a != out_axis)
        want = v / np.sqrt((v ** 2).sum(axes, keepdims=True)) * np.expand_dims(scale, axes)
        np.testing.assert_allclose(layer.weights().numpy(), want, rtol=1e-5, atol=1e-7)
        y = layer.initialize_from(x).numpy()
        np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-4 * layer.init_scale)
        np.testing.assert_allclose(y.std(axis=(0, 1, 2)), layer.init_scale, rtol=1e-3)
        np.testing.assert_allclose(layer(x).numpy(), y, rtol=1e-5, atol=1e-5)
    constant = Dense(3, weight_norm=True)  # every output equal on the batch: g = init_scale
    constant(tf.ones([2, 4, 4, 5]))
    constant.initialize_from(tf.ones([2, 4, 4, 5]))
    np.testing.assert_array_equal(constant.scale.numpy(), np.ones(3, np.float32))
    plain = Dense(3)
    plain(x)
    with pytest.raises(ValueError, match="needs weight_norm"):
        plain.initialize_from(x)


def test_kernels_are_computed_once_their_layer_s_input_is_ready():
    """In a graph each layer reads its kernel's variables only after its input exists, so
    that a training step does not compute every layer's kernel at its start and hold them
    all (nor, with train.recompute, a second copy for every block's rerun): weight-
    normalised and plain layers, the transposed and 1x1 ones, and MaskedConv2D."""
    from pixelcnn_tf.nn.layers import MaskedConv2D
    from pixelcnn_tf.nn.shifted import Dense, ShiftedConv2D, ShiftedDeconv2D
    x = tf.zeros([2, 6, 8, 3])
    for layer in [ShiftedConv2D(4, (2, 3), False, weight_norm=True),
                  ShiftedConv2D(4, (2, 2), True, stride=2), ShiftedDeconv2D(4, True),
                  ShiftedDeconv2D(4, False, weight_norm=True), Dense(4, weight_norm=True),
                  MaskedConv2D(6, 3, "A", n_colors=3)]:
        layer(x)  # makes the variables
        bias = layer.bias.handle
        graph = tf.function(layer).get_concrete_function(tf.TensorSpec(x.shape)).graph
        handles = {id(inner.op): outer for outer, inner in graph.captures}
        reads = [op for op in graph.get_operations() if op.type == "ReadVariableOp"
                 and handles[id(op.inputs[0].op)] is not bias]
        assert reads, layer.name
        for read in reads:
            assert graph.inputs[0].op in ancestors(read), f"{layer.name}: {read.name}"
        # Never on the padded copy: oneDNN fuses a pad into the convolution that reads it
        # (the step then failed with "nodes in a cycle" on CPUs where oneDNN is on).
        waits = [c for op in graph.get_operations() for c in op.control_inputs]
        assert not [c for c in waits if c.type == "Pad"], layer.name


def ancestors(op) -> set:
    """Every op that ``op`` waits for, through data and control edges."""
    seen, todo = set(), [op]
    while todo:
        current = todo.pop()
        for parent in [t.op for t in current.inputs] + list(current.control_inputs):
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return seen


def test_pixelcnn_pp_initialises_every_layer_from_data():
    tf.random.set_seed(0)
    model = build_model(pp_config(3, weight_norm=True, num_classes=2), (8, 8, 3))
    names = {v.name.split("/")[-1].split(":")[0] for v in model.trainable_variables}
    assert names == {"direction", "scale", "bias", "class_vector"}
    x = tf.random.uniform([6, 8, 8, 3])
    model.initialize_from_data(x, tf.constant([0, 1] * 3))
    scales = [v for v in model.trainable_variables if "scale" in v.name]
    assert all(not np.allclose(v.numpy(), 1.0) for v in scales)  # every layer reached
    params = model(x, tf.constant([0, 1] * 3)).numpy()  # the output layer's outputs
    np.testing.assert_allclose(params.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(params.std(axis=(0, 1, 2)), 1.0, rtol=1e-3)
    with pytest.raises(ValueError, match="weight-normalised models"):
        build_model(pp_config(3), (8, 8, 3)).initialize_from_data(x)


def test_output_shape_and_eager_equals_graph(rng):
    tf.random.set_seed(0)
    model = build_model(tiny_config(3).model, (6, 5, 3))
    x = tf.constant(rng.uniform(size=(2, 6, 5, 3)).astype(np.float32))
    eager = model(x)
    assert eager.shape == (2, 6, 5, 3, 256) and eager.dtype == tf.float32
    graph = tf.function(model)(x)
    np.testing.assert_allclose(eager.numpy(), graph.numpy(), rtol=1e-5, atol=1e-5)


def test_variables_created_by_build_model():
    model = build_model(tiny_config(1).model, (4, 4, 1))
    # input conv + 2 blocks x 3 convs + 2 output convs, kernel and bias each
    assert len(model.trainable_variables) == 2 * (1 + 2 * 3 + 2)
    h = 4
    expected = (3 * 3 * 1 * 2 * h + 2 * h  # input conv 3x3 (tiny config)
                + 2 * ((2 * h * h + h) + (9 * h * h + h) + (h * 2 * h + 2 * h))
                + (2 * h * 8 + 8) + (8 * 256 + 256))
    assert count_parameters(model) == expected


def test_paper_cifar10_size():
    from pixelcnn_tf.config import load_config
    model = build_model(load_config("config.yml").model, (32, 32, 3))
    assert count_parameters(model) == 4_342_308  # stated in the README


def test_wrong_input_shape_and_labels():
    model = build_model(tiny_config(1).model, (4, 4, 1))
    with pytest.raises(ValueError, match=r"built for images \[B, 4, 4, 1\]"):
        model(tf.zeros([1, 5, 4, 1]))
    with pytest.raises(ValueError, match="num_classes > 0"):
        model(tf.zeros([1, 4, 4, 1]), tf.zeros([1], tf.int32))


def test_class_conditioning_changes_the_output():
    tf.random.set_seed(0)
    model = build_model(tiny_config(1, num_classes=3).model, (4, 4, 1))
    model.class_bias.assign(tf.random.normal(model.class_bias.shape))
    x = tf.zeros([2, 4, 4, 1])
    out = model(x, tf.constant([0, 2]))
    assert not np.allclose(out[0].numpy(), out[1].numpy())
    with pytest.raises(ValueError, match="pass labels"):
        model(x)


def test_conditional_model_is_causal():
    tf.random.set_seed(0)
    model = build_model(tiny_config(3, num_classes=2).model, (4, 4, 3))
    model.class_bias.assign(tf.random.normal(model.class_bias.shape))
    jac = raster_jacobian(model, (4, 4, 3), labels=tf.constant([1]))
    assert np.all(jac[np.triu(np.ones(jac.shape, bool))] == 0.0)


def test_rgb_model_rejects_widths_not_divisible_by_three():
    with pytest.raises(ValueError, match="not divisible by n_colors=3"):
        build_model(tiny_config(1).model, (4, 4, 3))  # hidden_dim=4 → 2h=8
