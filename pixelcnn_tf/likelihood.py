"""Output distributions: negative log-likelihood, bits per dimension, per-sub-pixel logits.

A model's last layer predicts the parameters of one of two distributions
(``model.output``):

  categorical       L logits per sub-pixel (L = 2^bits levels, 256 for 8-bit images):
                    the network computes each colour of a pixel in its own step
                    (colour-group masks R < G < B), so a model evaluated step by step takes
                    H·W·C steps. Output ``[B, H, W, C, L]``.
  logistic_mixture  the discretized logistic mixture of PixelCNN++ (Salimans et al. 2017):
                    per pixel, M mixture weights shared by the colours, per colour and
                    component a mean and a log-scale, and C·(C-1)/2 coefficients per
                    component that make the green mean linear in red and the blue mean
                    linear in red and green. The network sees only earlier pixels (no
                    colour groups) and predicts the whole pixel in one step: H·W steps.
                    Output ``[B, H, W, P]``, P = M·(1 + 2C + C(C-1)/2) (10M for RGB).

Images are integer *levels* 0..L-1 (``data.bits`` sets L = 2^bits; data.py quantizes 8-bit
images when it loads them). Everything that scores or samples goes through a
``Distribution`` here, never through the raw tensor's layout. bits/dim = total NLL in nats over every sub-pixel of every image (the
first one included) / (N·H·W·C·ln 2); over a split, nats are summed, never batch means
averaged.

The mixture's bin probabilities are exact: the L levels are L bins of width 2/(L-1) on
[-1, 1]; bin v of a logistic with mean m and scale s is σ((x⁺ - m)/s) - σ((x⁻ - m)/s) with
the edges x = ±1 taking the tails, computed in log space as log σ(a) + log σ(-b) +
log(1 - e^(b-a)) (no cancellation, no density approximation), so the L probabilities of
every sub-pixel sum to 1.
"""
from __future__ import annotations

import math
from typing import Optional

import tensorflow as tf

LN2 = math.log(2.0)
N_LEVELS = 256  # levels of an 8-bit image (data.bits = 8, the default)
OUTPUTS = ("categorical", "logistic_mixture")
MIN_LOG_SCALE = -7.0  # as PixelCNN++: scales below e^-7 (8-bit bins are 2/255 wide) add nothing
MAX_MIXTURES = 64


def bits_per_dim(total_nats, num_dims) -> float:
    """Converts a summed NLL in nats over ``num_dims`` sub-pixels to bits/dim."""
    return float(total_nats) / (float(num_dims) * LN2)


def levels_of(bits: int) -> int:
    """The number of levels L of a ``bits``-bit image (1..8)."""
    if not 1 <= int(bits) <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    return 2 ** int(bits)


class Distribution:
    """The output distribution of a model over the sub-pixels of one pixel.

    ``groups``: how many steps the network takes per pixel (C for the categorical, whose
    masks split channels into colour groups; 1 for the mixture). ``num_params``: outputs
    per pixel of the last layer. ``n_levels``: L, the values 0..L-1 of a sub-pixel.
    """

    name = ""

    def __init__(self, n_colors: int, n_levels: int = N_LEVELS):
        self.n_colors = int(n_colors)
        self.n_levels = int(n_levels)
        if self.n_levels not in [2 ** b for b in range(1, 9)]:
            raise ValueError(f"n_levels must be 2^bits with bits in 1..8, got {n_levels}")

    @property
    def bits(self) -> int:
        """The bit depth of the images: n_levels = 2^bits."""
        return self.n_levels.bit_length() - 1

    groups: int
    num_params: int

    def to_output(self, y: tf.Tensor) -> tf.Tensor:
        """The last layer's ``[B, H, W, num_params]`` → the model's output."""
        raise NotImplementedError

    def at(self, params: tf.Tensor, i, j, group) -> tf.Tensor:
        """The model's output → the parameters of one step ``[N, num_params / groups]``
        (pixel (i, j), colour group ``group``): what an incremental step returns."""
        raise NotImplementedError

    def nll_per_pixel(self, params: tf.Tensor, images: tf.Tensor) -> tf.Tensor:
        """NLL in nats of each pixel (all its colours) ``[B, H, W]`` float32 (images:
        uint8/int levels ``[B, H, W, C]``)."""
        raise NotImplementedError

    def nll_per_image(self, params: tf.Tensor, images: tf.Tensor) -> tf.Tensor:
        """Total NLL in nats of each image ``[B]`` float32 (images: uint8/int ``[B, H, W, C]``)."""
        return tf.reduce_sum(self.nll_per_pixel(params, images), axis=[1, 2])

    def subpixel_logits(self, step_params: tf.Tensor, pixel: tf.Tensor, c: int) -> tf.Tensor:
        """log p(colour ``c`` = v | colours before c of ``pixel``, earlier pixels) for every
        v, ``[N, L]`` float32 (normalised up to a constant per row). ``step_params``:
        the step's parameters (for the categorical, those of colour c's own step);
        ``pixel``: int ``[N, C]`` (colours from c on are ignored)."""
        raise NotImplementedError

    # Drawing: the sampler gives each step ``noise_width`` uniforms in (0, 1) per image.
    noise_width: int

    def draw(self, step_params: tf.Tensor, pixel: tf.Tensor, c, kept: tf.Tensor,
             noise: tf.Tensor, temperature, greedy) -> tf.Tensor:
        """One step's draw: ``pixel`` int32 ``[N, C]`` with the sub-pixels this step
        covers drawn from ``step_params`` (colour group ``c``'s), those where ``kept``
        (bool ``[C]``, or ``[N, C]`` per row) keep their values. ``noise``:
        ``[N, noise_width]`` uniforms in (0, 1); ``temperature`` divides the
        log-probabilities; ``greedy`` takes the most likely value (a bool or a bool
        tensor)."""
        raise NotImplementedError

    def mean_bits_per_dim(self, params: tf.Tensor, images: tf.Tensor) -> tf.Tensor:
        """The training loss: mean NLL over every sub-pixel of the batch, in bits."""
        dims = tf.cast(tf.reduce_prod(tf.shape(images)), tf.float32)
        return tf.reduce_sum(self.nll_per_image(params, images)) / (dims * LN2)


class Categorical(Distribution):
    """L logits per sub-pixel; output ``[B, H, W, C, L]`` (for 1-bit images, a softmax
    over two logits: a Bernoulli of σ(l₁ - l₀), the Keras example's sigmoid output)."""

    name = "categorical"

    def __init__(self, n_colors: int, n_levels: int = N_LEVELS):
        super().__init__(n_colors, n_levels)
        self.groups = self.n_colors
        self.num_params = self.n_colors * self.n_levels
        self.noise_width = self.n_levels

    def to_output(self, y):
        shape = tf.shape(y)
        # [..., C*L] → [..., C, L]: channel groups are contiguous per colour.
        return tf.reshape(y, tf.concat([shape[:-1], [self.n_colors, self.n_levels]], axis=0))

    def at(self, params, i, j, group):
        return params[:, i, j, group]  # [N, L]

    def nll_per_pixel(self, params, images):
        return tf.reduce_sum(nll_per_dim(params, images), axis=-1)

    def subpixel_logits(self, step_params, pixel, c):
        return tf.cast(step_params, tf.float32)

    def draw(self, step_params, pixel, c, kept, noise, temperature, greedy):
        """Colour ``c`` by Gumbel-max over its L logits."""
        values = gumbel_max(self.subpixel_logits(step_params, pixel, c), noise, temperature,
                            greedy)  # [N]
        here = tf.equal(tf.range(self.n_colors), c)[None] & ~kept  # [N, C]
        return tf.where(here, values[:, None], pixel)


def gumbel_max(logits: tf.Tensor, noise: tf.Tensor, temperature, greedy) -> tf.Tensor:
    """logits ``[N, K]`` and uniforms ``noise`` ``[N, K]`` in (0, 1) → int32 ``[N]``: an
    exact draw from softmax(logits / T), argmax(logits / T + G) with G = -log(-log U);
    where ``greedy`` (a bool, or a bool tensor: one compiled sampler serves both) the
    argmax of the logits."""
    logits = tf.cast(logits, tf.float32)
    gumbel = -tf.math.log(-tf.math.log(noise))
    drawn = tf.argmax(logits / temperature + gumbel, axis=-1, output_type=tf.int32)
    return tf.where(greedy, tf.argmax(logits, axis=-1, output_type=tf.int32), drawn)


def nll_per_dim(logits: tf.Tensor, images: tf.Tensor) -> tf.Tensor:
    """Categorical NLL in nats of every sub-pixel: logits ``[B, H, W, C, L]`` (any float
    dtype; the softmax runs in float32), levels ``[B, H, W, C]`` 0..L-1 → float32
    ``[B, H, W, C]``."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(images, tf.int32), logits=tf.cast(logits, tf.float32))


def to_unit_range(values, n_levels: int) -> tf.Tensor:
    """Levels 0..L-1 → the bin centres x = 2v/(L-1) - 1 in [-1, 1], float32."""
    return tf.cast(values, tf.float32) / ((n_levels - 1) / 2.0) - 1.0  # 8-bit: v/127.5 - 1


def log_bin_probs(values: tf.Tensor, mean: tf.Tensor, log_scale: tf.Tensor,
                  n_levels: int = N_LEVELS) -> tf.Tensor:
    """log P(v) of the level ``values`` (0..L-1) under a logistic(mean, e^log_scale) on
    [-1, 1] discretized into L bins of width 2/(L-1) (bin centres x = 2v/(L-1) - 1; the
    edge bins take the tails). Broadcasting float32 tensors → float32.

    Exact in float32 for any parameters: with a = (x + 1/(L-1) - mean)/s and
    b = (x - 1/(L-1) - mean)/s, σ(a) - σ(b) = σ(a)·σ(-b)·(1 - e^-(a-b)).
    """
    half = 1.0 / (n_levels - 1)  # half a bin
    x = to_unit_range(values, n_levels)
    inv_scale = tf.exp(-log_scale)
    centred = x - mean
    upper = inv_scale * (centred + half)  # a
    lower = inv_scale * (centred - half)  # b
    log_cdf_upper = -tf.nn.softplus(-upper)  # log σ(a): the bin at 0 takes the lower tail
    log_survival_lower = -tf.nn.softplus(lower)  # log σ(-b) = log(1 - σ(b)): v = L - 1
    # log(1 - e^-d) with d = a - b = 2/((L-1) s) > 0. For small d (a wide logistic) the
    # series log d - d/2 + d²/24 (error < d⁴/2880), with log d from the log-scale, so the
    # width stays finite however large s is.
    log_d = math.log(2.0 / (n_levels - 1)) - log_scale
    d = tf.exp(log_d)
    log_width = tf.where(d < 1e-3, log_d - d / 2.0 + d * d / 24.0,
                         tf.math.log(-tf.math.expm1(-tf.maximum(d, 1e-3))))
    interior = log_cdf_upper + log_survival_lower + log_width
    v = tf.cast(values, tf.int32)
    return tf.where(v <= 0, log_cdf_upper,
                    tf.where(v >= n_levels - 1, log_survival_lower, interior))


class LogisticMixture(Distribution):
    """The discretized logistic mixture of PixelCNN++; output ``[B, H, W, P]``.

    Layout of the P = M·(1 + 2C + C(C-1)/2) parameters of a pixel: mixture logits [M],
    means [C, M], log-scales [C, M] (clipped below at -7), coefficients [C(C-1)/2, M]
    (through tanh): mean_G += α·R, mean_B += β·R + γ·G with R, G in [-1, 1].
    """

    name = "logistic_mixture"

    def __init__(self, n_colors: int, num_mixtures: int, n_levels: int = N_LEVELS):
        super().__init__(n_colors, n_levels)
        if not 1 <= int(num_mixtures) <= MAX_MIXTURES:
            raise ValueError(f"num_mixtures must be in 1..{MAX_MIXTURES}, got {num_mixtures}")
        self.num_mixtures = int(num_mixtures)
        self.groups = 1
        c = self.n_colors
        self.num_coeffs = c * (c - 1) // 2
        self.num_params = self.num_mixtures * (1 + 2 * c + self.num_coeffs)

    def to_output(self, y):
        return y

    def at(self, params, i, j, group):
        return params[:, i, j]  # [N, P]

    def split(self, params: tf.Tensor):
        """``[..., P]`` → (mixture logits ``[..., M]``, means ``[..., C, M]``, log-scales
        ``[..., C, M]``, coefficients ``[..., C(C-1)/2, M]``), float32."""
        params = tf.cast(params, tf.float32)
        m, c = self.num_mixtures, self.n_colors
        lead = tf.shape(params)[:-1]
        logits, means, log_scales, coeffs = tf.split(
            params, [m, c * m, c * m, self.num_coeffs * m], axis=-1)

        def grid(t, rows):  # [..., rows·M] → [..., rows, M]
            return tf.reshape(t, tf.concat([lead, [rows, m]], 0))

        return (logits, grid(means, c), tf.maximum(grid(log_scales, c), MIN_LOG_SCALE),
                tf.tanh(grid(coeffs, self.num_coeffs)))

    def colour_means(self, means: tf.Tensor, coeffs: tf.Tensor, pixel: tf.Tensor, c: int):
        """The mean of colour ``c`` given the earlier colours of ``pixel`` (int
        ``[..., C]``): ``[..., M]``."""
        mean = means[..., c, :]
        x = to_unit_range(pixel, self.n_levels)  # [..., C] in [-1, 1]
        first = c * (c - 1) // 2  # coefficients of colour c: c of them, one per earlier colour
        for earlier in range(c):
            mean += coeffs[..., first + earlier, :] * x[..., earlier, None]
        return mean

    def log_weights(self, parts, pixel: tf.Tensor, include) -> tf.Tensor:
        """log π_k + Σ over the colours c with ``include[c]`` of log p_k(colour c | the
        earlier colours of ``pixel``): ``[..., M]``. ``parts``: ``split(params)``;
        ``pixel``: int ``[..., C]``; ``include``: per colour, a Python bool or a bool
        tensor broadcastable to ``[..., 1]`` (known only at run time)."""
        logits, means, log_scales, coeffs = parts
        total = tf.nn.log_softmax(logits, axis=-1)
        for c, use in enumerate(include):
            if use is False:
                continue
            log_p = log_bin_probs(pixel[..., c, None], self.colour_means(means, coeffs, pixel, c),
                                  log_scales[..., c, :], self.n_levels)
            total += log_p if use is True else tf.where(use, log_p, tf.zeros_like(log_p))
        return total

    def nll_per_pixel(self, params, images):
        images = tf.cast(images, tf.int32)
        every_colour = [True] * self.n_colors
        return -tf.reduce_logsumexp(self.log_weights(self.split(params), images, every_colour),
                                    axis=-1)  # [B, H, W]

    def subpixel_logits(self, step_params, pixel, c):
        parts = self.split(step_params)  # [N, ...]
        _, means, log_scales, coeffs = parts
        pixel = tf.cast(pixel, tf.int32)
        # Posterior weights of the components after the colours before c: [N, M].
        weights = tf.nn.log_softmax(
            self.log_weights(parts, pixel, [e < c for e in range(self.n_colors)]), axis=-1)
        values = tf.range(self.n_levels)[None, :, None]  # [1, L, 1]
        per_component = log_bin_probs(values, self.colour_means(means, coeffs, pixel, c)[:, None],
                                      log_scales[:, None, c, :], self.n_levels)  # [N, L, M]
        return tf.reduce_logsumexp(per_component + weights[:, None], axis=-1)  # [N, L]

    @property
    def noise_width(self) -> int:
        return self.num_mixtures + self.n_colors  # the component, then one per colour

    def draw(self, step_params, pixel, c, kept, noise, temperature, greedy):
        """The whole pixel, as PixelCNN++ samples, in O(M + C) instead of evaluating L
        bins per colour: the component k by Gumbel-max over its log-weight (log π_k plus
        the log-probabilities of the kept colours: its posterior, ``noise[:, :M]``), then
        each colour c from component k's logistic by inverse CDF, x = μ + s·log(u / (1 -
        u)) with u = ``noise[:, M + c]``, put in its bin v = floor((x + 1)·(L-1)/2 + 0.5)
        clipped to 0..L-1. P(v) is then exactly the bin probability of ``log_bin_probs``
        (the edge bins take the tails), so the pixel is an exact draw from the
        distribution the NLL scores (tested against its per-colour conditionals).
        ``temperature`` divides the component log-weights and multiplies the scales;
        greedy takes the most likely component and its means."""
        m, channels = self.num_mixtures, self.n_colors
        parts = self.split(step_params)  # [N, M], [N, C, M], [N, C, M], [N, C(C-1)/2, M]
        _, means, log_scales, coeffs = parts
        kept = tf.broadcast_to(kept, tf.shape(pixel))  # [N, C]
        weights = self.log_weights(parts, pixel, [kept[:, c, None] for c in range(channels)])
        component = gumbel_max(weights, noise[:, :m], temperature, greedy)
        chosen = tf.one_hot(component, m)  # [N, M]
        for c in range(channels):
            x = tf.reduce_sum(chosen * self.colour_means(means, coeffs, pixel, c), -1)  # [N]
            u = noise[:, m + c]
            scale = tf.exp(tf.reduce_sum(chosen * log_scales[:, c], -1)) * temperature
            x += tf.where(greedy, 0.0, scale * (tf.math.log(u) - tf.math.log1p(-u)))
            top = float(self.n_levels - 1)
            value = tf.cast(tf.clip_by_value(tf.floor((x + 1.0) * (top / 2.0) + 0.5), 0.0, top),
                            tf.int32)
            value = tf.where(kept[:, c], pixel[:, c], value)
            pixel = tf.where(tf.equal(tf.range(channels), c)[None], value[:, None], pixel)
        return pixel


def make_distribution(output: str, n_colors: int, num_mixtures: Optional[int] = None,
                      n_levels: int = N_LEVELS) -> Distribution:
    """``model.output`` → its Distribution for images of ``n_colors`` channels with
    ``n_levels`` levels."""
    if output == "categorical":
        return Categorical(n_colors, n_levels)
    if output == "logistic_mixture":
        return LogisticMixture(n_colors, num_mixtures or 10, n_levels)
    raise ValueError(f"unknown model.output {output!r}; allowed: {', '.join(OUTPUTS)}")


# The categorical functions by name (the default output), for code that has logits.
def nll_per_image(logits: tf.Tensor, images: tf.Tensor) -> tf.Tensor:
    """Categorical NLL in nats of each image: ``[B]`` float32."""
    return tf.reduce_sum(nll_per_dim(logits, images), axis=[1, 2, 3])


def mean_bits_per_dim(logits: tf.Tensor, images: tf.Tensor) -> tf.Tensor:
    """Categorical training loss: mean NLL over every sub-pixel of the batch, in bits."""
    return tf.reduce_mean(nll_per_dim(logits, images)) / LN2
