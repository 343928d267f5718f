"""SavedModel export with serving signatures.

The exported model needs only TensorFlow to load (``tf.saved_model.load``); it exposes

  log_prob(images)                       uint8 [N, H, W, C] → bits/dim of each image
                                         ``bits_per_dim`` [N] and its NLL ``nats`` [N]
  sample(n, seed, temperature)           → uint8 [n, H, W, C] (= generate_images)
  complete(images, rows, seed)           keeps the top ``rows`` rows, samples the rest
  serving_default                        = log_prob

Class-conditional models take ``labels`` (int32 [N] / [n]) in every signature. The
batch size is dynamic everywhere. The config (``assets/config.yml``), the image shape and
the number of classes are recorded in the SavedModel (attributes ``image_shape``,
``num_classes``, ``bits``, ``config_yaml``, ``sampling_method``: variables, read with
``.numpy()``). Images are the model's levels 0..2^bits - 1 (``data.bits``; 0..255 for
8-bit runs): values above are refused with a message naming the bit depth. Images of
another height, width or channel count fail with a message naming the expected shape, in
the signatures and the attributes alike; float tensors are refused, never cast (a numpy
float array given to a *signature* is cast by TensorFlow's argument binding before this
code runs: docs/compression.md).
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile

import tensorflow as tf
import yaml

from pixelcnn_tf.config import MAX_SAMPLES, Config, config_to_dict
from pixelcnn_tf.models.base import unit_images
from pixelcnn_tf.sampling import fast_sampling, get_sampler

SIGNATURES = ("log_prob", "sample", "complete", "serving_default")


class ExportModule(tf.Module):
    """Wraps a trained model with the serving functions."""

    def __init__(self, model, config: Config, name=None):
        super().__init__(name=name)
        self.model = model
        height, width, channels = model.image_shape
        self.conditional = model.num_classes > 0
        method = "fast" if fast_sampling(model) else "naive"
        # Non-trainable variables: saved with the model, readable after loading.
        self.image_shape = tf.Variable(model.image_shape, trainable=False, dtype=tf.int32)
        self.num_classes = tf.Variable(model.num_classes, trainable=False, dtype=tf.int32)
        top, bits = model.distribution.n_levels - 1, model.distribution.bits
        self.bits = tf.Variable(bits, trainable=False, dtype=tf.int32)
        self.sampling_method = tf.Variable(method, trainable=False)
        self.config_yaml = tf.Variable(yaml.safe_dump(config_to_dict(config), sort_keys=False),
                                       trainable=False)
        self._sampler = get_sampler(model, method, self.conditional)
        dims = float(height * width * channels)
        images_spec = tf.TensorSpec([None, height, width, channels], tf.uint8, name="images")
        labels_spec = [tf.TensorSpec([None], tf.int32, name="labels")] if self.conditional else []

        def labels_or_zeros(labels, n):
            return labels[0] if labels else tf.zeros([n], tf.int32)

        def check_labels(labels, n):
            if not labels:
                return []
            return [tf.debugging.assert_equal(tf.shape(labels[0])[0], n,
                                              message="labels must have one id per image"),
                    tf.debugging.assert_greater_equal(labels[0], 0,
                                                      message="labels must be >= 0"),
                    tf.debugging.assert_less(labels[0], model.num_classes,
                                             message="labels must be < num_classes")]

        expected = (f"[N, {height}, {width}, {channels}] uint8 (levels 0..{top}, "
                    f"data.bits={bits})")

        def conform(images):
            """images checked against the model's [H, W, C] (the message names it) and
            given its static shape. The cond hides a wrong static shape from shape
            inference, so the check fails with its message at run time instead of
            EnsureShape failing at trace time."""
            shape, want = tf.shape(images)[1:], tf.constant([height, width, channels])
            checks = [tf.debugging.assert_equal(shape, want, message=f"images must be {expected}")]
            if top < 255:
                checks.append(tf.debugging.assert_less_equal(
                    images, tf.constant(top, tf.uint8), message=f"images must be {expected}"))
            with tf.control_dependencies(checks):
                images = tf.cond(tf.reduce_all(tf.equal(shape, want)), lambda: images,
                                 lambda: tf.zeros([0, height, width, channels], images.dtype))
            return tf.ensure_shape(images, [None, height, width, channels])

        def unless_empty(images, compute, empty):
            """``compute()``, or ``empty`` for a batch of no images: the network never
            sees an empty batch (oneDNN's fused convolutions, on by default on AVX-512
            CPUs, return one of the wrong shape, and the signature failed)."""
            return tf.cond(tf.shape(images)[0] > 0, compute, lambda: empty)

        def log_prob(images, *labels):
            """uint8 images [N, H, W, C] → bits/dim and NLL in nats of each image, float32
            [N]."""
            images = conform(images)

            def nll():
                inputs = unit_images(images, model.distribution.n_levels)
                params = model(inputs, labels[0] if labels else None)
                return model.distribution.nll_per_image(params, images)

            with tf.control_dependencies(check_labels(labels, tf.shape(images)[0])):
                nats = unless_empty(images, nll, tf.zeros([0]))
            return {"bits_per_dim": nats / (dims * math.log(2.0)), "nats": nats}

        def sample(n, seed, temperature, *labels):
            """n images drawn with a seed and a temperature → uint8 [n, H, W, C]."""
            checks = [tf.debugging.assert_positive(n, message="n must be >= 1"),
                      tf.debugging.assert_less_equal(
                          n, MAX_SAMPLES, message=f"n must be <= {MAX_SAMPLES} (one batch)"),
                      tf.debugging.assert_positive(temperature,
                                                   message="temperature must be > 0")]
            with tf.control_dependencies(checks + check_labels(labels, n)):
                images = tf.zeros([n, height, width, channels], tf.int32)
            return {"images": self._sampler(images, tf.constant(0), seed, temperature,
                                            tf.constant(False), labels_or_zeros(labels, n))}

        def complete(images, rows, seed, *labels):
            """Keeps the top ``rows`` rows of uint8 images [N, H, W, C], samples the rest."""
            n = tf.shape(images)[0]
            images = conform(images)
            checks = [tf.debugging.assert_greater_equal(rows, 0, message="rows must be >= 0"),
                      tf.debugging.assert_less(rows, height,
                                               message=f"rows must be < height {height}")]
            with tf.control_dependencies(checks + check_labels(labels, n)):
                start = rows * width * channels
            return {"images": unless_empty(images, lambda: self._sampler(
                tf.cast(images, tf.int32), start, seed, tf.constant(1.0), tf.constant(False),
                labels_or_zeros(labels, n)), tf.zeros([0, height, width, channels], tf.uint8))}

        scalar = tf.TensorSpec([], tf.int32, name="n")
        seed_spec = tf.TensorSpec([], tf.int64, name="seed")
        # autograph=False (as for every function here): no Python control flow on
        # tensors, and converting the model's code would only slow the tracing.
        self.sample = tf.function(sample, autograph=False, input_signature=[
            scalar, seed_spec, tf.TensorSpec([], tf.float32, name="temperature"), *labels_spec])
        # log_prob and complete are traced for uint8 images of the model's shape (the
        # signatures) and of any shape (attribute calls), so a wrong height, width or
        # channel count reaches the shape check and its message; float images match no
        # trace and are refused (never cast to uint8).
        any_images = tf.TensorSpec([None, None, None, None], tf.uint8, name="images")
        self.log_prob = tf.function(log_prob, autograph=False)
        self.complete = tf.function(complete, autograph=False)
        for spec in (images_spec, any_images):
            self.log_prob.get_concrete_function(spec, *labels_spec)
            self.complete.get_concrete_function(
                spec, tf.TensorSpec([], tf.int32, name="rows"), seed_spec, *labels_spec)
        self._signature_specs = {
            "log_prob": [images_spec, *labels_spec],
            "complete": [images_spec, tf.TensorSpec([], tf.int32, name="rows"), seed_spec,
                         *labels_spec]}


def export_saved_model(model, config: Config, path: str) -> str:
    """Writes ``model`` with its signatures to ``path`` and returns it.

    The SavedModel is written to a staging directory next to ``path`` and moved into place
    only once complete, so a failed export never leaves a half-written ``path``.
    """
    module = ExportModule(model, config)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".saved_model_", dir=parent)
    asset_dir = tempfile.mkdtemp(prefix=".assets_", dir=parent)  # copied into the export
    try:
        config_file = os.path.join(asset_dir, "config.yml")
        with open(config_file, "w") as f:
            f.write(module.config_yaml.numpy().decode())
        module.config_asset = tf.saved_model.Asset(config_file)
        log_prob = module.log_prob.get_concrete_function(*module._signature_specs["log_prob"])
        tf.saved_model.save(module, staging, signatures={
            "serving_default": log_prob,
            "log_prob": log_prob,
            "sample": module.sample.get_concrete_function(),
            "complete": module.complete.get_concrete_function(
                *module._signature_specs["complete"]),
        })
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(asset_dir, ignore_errors=True)
    return path
