"""The masked convolution and the small pieces every model type shares, each with its
one-position step beside it.

A model is evaluated two ways: a full pass over whole images (training, scoring, the naive
sampler), and step by step in raster order (the fast sampler and the codec; Ramachandran
et al. 2017, "Fast Generation for Convolutional Autoregressive Models"). At step (i, j, c)
only the outputs at pixel (i, j), colour group c, are new, so each layer is evaluated at
that one position from caches of what earlier steps computed; the result equals the full
pass. ``Position`` names the step; ``MaskedConv2D`` has its step in ``ConvStep``.
"""
from __future__ import annotations

import threading
import weakref
from typing import List, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.python.eager import record  # tape control, as tf.recompute_grad uses

from pixelcnn_tf.nn.masks import KernelSize, _kernel_hw, get_mask


def per_image(values: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """Reshapes per-image vectors ``[B, D]`` to broadcast against ``like`` ``[B, ..., D]``
    (``[B, H, W, D]`` in a full pass, ``[B, D]`` at one position). Values of ``like``'s
    rank (per-position maps, e.g. ``[B, H, W, D]`` or one row ``[B, 1, W, D]``) already
    broadcast and are returned as they are."""
    if values.shape.rank == like.shape.rank:
        return values
    extra = like.shape.rank - 2
    return tf.reshape(values, [-1] + [1] * extra + [values.shape[-1]])


def run_block(block, *args, recompute: bool = False):
    """``block(*args)``; with ``recompute`` (``train.recompute``) the block keeps none of
    its activations for the backward pass, which runs it again from its inputs
    (gradient checkpointing, ``recompute_grad``): memory for time, the same values
    and gradients. ``args`` are float tensors, nests of them, None, or integer tensors
    (labels, seeds: no gradient, reused as they are); a block that draws random numbers
    must take its seed as an argument, so that the second run draws the same ones."""
    if not recompute:
        return block(*args)
    flat = tf.nest.flatten(args)
    differentiable = [i for i, a in enumerate(flat)
                      if a is not None and tf.as_dtype(a.dtype).is_floating]

    def rerun(*tensors):
        full = list(flat)
        for i, tensor in zip(differentiable, tensors):
            full[i] = tensor
        return block(*tf.nest.pack_sequence_as(args, full))

    return recompute_grad(rerun)(*[flat[i] for i in differentiable])


# Per graph being built, per thread: the input gradients of the block whose backward
# pass was built last; the next block's rerun waits for them (``recompute_grad``).
_rerun_chains: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def recompute_grad(f):
    """``f`` (float tensors → float tensors) with a gradient that runs ``f`` again
    from its inputs instead of keeping its activations: ``tf.recompute_grad``, with the
    reruns ordered so that one is alive at a time.

    With ``tf.recompute_grad`` TensorFlow's executor races along the input gradients:
    a block's input gradients exist before its variables' gradients, so the earlier
    blocks rerun while the later blocks' filter gradients wait, each keeping its
    rerun's activations (its padded inputs above all) until they run, and two
    independent blocks (PixelCNN++'s u and ul streams) rerun at once. Profiled in a
    recomputed batch-16 step of PixelCNN++, the reruns of about ten blocks were alive at
    the step's peak (docs/training.md has the figures). Here, in a ``tf.function``:

    - a block's input gradients wait for its variables' gradients;
    - its rerun waits for its output's gradients and for the input gradients of the
      block whose backward pass was built before it (in the same graph and thread; a
      tf.distribute replica traces in its own thread, so replicas do not wait for each
      other). Each waits only for tensors that exist already, so no cycle can form.

    Both are control dependencies, which XLA ignores; for XLA the rerun's inputs also
    carry ``x + min(|dy|, 0)`` of one output-gradient value, a data dependency on the
    output's gradient that adds 0 (NaN where that value is NaN, when the step is skipped
    anyway)."""

    @tf.custom_gradient
    def wrapped(*inputs):
        with record.stop_recording():  # (as tf.recompute_grad: no tape keeps them)
            output = f(*inputs)

        def grad(*dys, variables=None):
            first = tf.cast(tf.reshape(dys[0], [-1])[:1], tf.float32)
            wait = tf.reduce_sum(tf.minimum(tf.abs(first), 0.0))
            chain = (None if tf.executing_eagerly() else
                     _rerun_chains.setdefault(tf.compat.v1.get_default_graph(), {}))
            thread = threading.get_ident()  # (a replica of tf.distribute: its own chain)
            before = [] if chain is None else chain.get(thread, [])
            with tf.control_dependencies([*dys, *before]):
                again = [tf.identity(x) + tf.cast(wait, x.dtype) for x in inputs]
            variables = list(variables or [])
            with tf.GradientTape() as tape:
                tape.watch(again)
                rerun = f(*again)
            grads = tape.gradient(tf.nest.flatten(rerun), again + variables,
                                  output_gradients=list(dys),
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            input_grads, variable_grads = grads[:len(again)], grads[len(again):]
            # The block before this one reruns once these input gradients exist; they
            # wait for the variables' gradients too, which otherwise lag behind (off the
            # critical path) and keep this rerun's activations alive meanwhile.
            with tf.control_dependencies(variable_grads):
                input_grads = [tf.identity(g) for g in input_grads]
            if chain is not None:
                chain[thread] = input_grads
            return input_grads, variable_grads

        return output, grad

    return wrapped


def check_dilation(dilation) -> int:
    """A dilation rate as an int >= 1, or a ValueError."""
    if isinstance(dilation, bool) or int(dilation) != dilation or dilation < 1:
        raise ValueError(f"dilation must be an integer >= 1, got {dilation!r}")
    return int(dilation)


def valid_conv2d(x: tf.Tensor, kernel: tf.Tensor, dilation: int = 1) -> tf.Tensor:
    """A stride-1 VALID convolution with taps ``dilation`` pixels apart. Dilated, it is
    written with ``space_to_batch`` (``atrous_conv2d``): TensorFlow's own CPU gradient of
    a dilated ``conv2d`` exists only with oneDNN, which is off by default on CPUs without
    AVX-512 ("Current CPU implementations do not yet support dilation rates larger than
    1"), so training a dilated model failed there."""
    if dilation == 1:
        return tf.nn.conv2d(x, kernel, strides=1, padding="VALID")
    return tf.nn.atrous_conv2d(x, kernel, dilation, padding="VALID")


class MaskedConv2D(tf.Module):
    """A stride-1 2-D convolution (SAME output size) whose kernel is multiplied by a
    causal mask, optionally dilated.

    With ``dilation`` d the kernel taps are d pixels apart: tap (a, b) of a kh x kw kernel
    reads the input at (i + d·(a - kh//2), j + d·(b - kw//2)). The mask is the same, in
    kernel coordinates, so a mask-B kernel still reads only rows above (every d-th one)
    and pixels left of (i, j) on row i.

    The mask (see :func:`pixelcnn_tf.nn.masks.get_mask`) is applied to the kernel inside
    ``__call__``; the variable itself stays unmasked, so no optimizer step or
    initialisation can make a masked weight leak information.

    Variables are created on the first call, from the input's channel count:
      kernel ``[kh, kw, C_in, features_out]``: truncated normal, stddev
        ``sqrt(scale / fan_in)`` where fan_in is the number of *unmasked* taps feeding
        one output (He initialisation for the connections that exist).
      bias ``[features_out]``: zeros.
    """

    def __init__(self, features_out: int, kernel_size: KernelSize, mode: str = "B",
                 n_colors: int = 3, use_bias: bool = True, init_scale: float = 2.0,
                 dilation: int = 1, name: Optional[str] = None):
        super().__init__(name=name)
        self.features_out = int(features_out)
        self.kernel_size = _kernel_hw(kernel_size)
        self.dilation = check_dilation(dilation)
        self.mode = mode
        self.n_colors = n_colors
        self.use_bias = use_bias
        self.init_scale = float(init_scale)
        # Checked now so a bad width fails at construction, not at the first call.
        get_mask(self.kernel_size, n_colors, self.features_out, mode, n_colors)
        self.kernel: Optional[tf.Variable] = None
        self.bias: Optional[tf.Variable] = None
        self._mask: Optional[tf.Tensor] = None

    @tf.Module.with_name_scope
    def _build(self, features_in: int) -> None:
        mask = get_mask(self.kernel_size, features_in, self.features_out, self.mode,
                        self.n_colors)
        fan_in = max(float(mask.sum(axis=(0, 1, 2)).mean()), 1.0)
        stddev = float(np.sqrt(self.init_scale / fan_in))
        shape = (*self.kernel_size, features_in, self.features_out)
        self.kernel = tf.Variable(tf.random.truncated_normal(shape, stddev=stddev),
                                  name="kernel")
        if self.use_bias:
            self.bias = tf.Variable(tf.zeros([self.features_out]), name="bias")
        self._mask = tf.constant(mask, name="mask")

    @property
    def mask(self) -> tf.Tensor:
        """The mask ``[kh, kw, C_in, features_out]`` (after the first call)."""
        if self._mask is None:
            raise ValueError(f"{self.name} has no mask yet: call it on an input first")
        return self._mask

    def masked_kernel(self, dtype: tf.DType = tf.float32,
                      after: Optional[tf.Tensor] = None) -> tf.Tensor:
        """The kernel times its mask, cast to ``dtype``: ``[kh, kw, C_in, features_out]``.
        ``after``: the layer's input, which the kernel then waits for in a graph (see
        ``nn.shifted._Linear.weights``)."""
        with tf.control_dependencies([] if after is None else [after]):
            return tf.cast(self.kernel * self._mask, dtype)

    @tf.Module.with_name_scope
    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        """``x``: ``[B, H, W, C_in]`` → ``[B, H, W, features_out]`` (its evaluation at one
        position is ``ConvStep``)."""
        x = tf.convert_to_tensor(x)
        if x.shape.rank != 4:
            raise ValueError(f"{self.name} expects [B, H, W, C] inputs, got shape {x.shape}")
        if self.kernel is None:
            self._build(int(x.shape[-1]))
        # Both mask modes zero every kernel row below the centre (and, in the centre row,
        # every column right of the centre), so the convolution runs with only the taps
        # that can be non-zero and pads the input on top and at the sides: the output of
        # a SAME conv with the full masked kernel, with fewer FLOPs (3x3 → 2x3, 7x7 →
        # 4x7, 1x5 → 1x3). Dilated: the padding is d times as wide.
        kh, kw = self.kernel_size
        d = self.dilation
        rows = kh // 2 + 1
        right = kw // 2 if kh > 1 else 0  # a one-row kernel sees nothing to the right
        kernel = self.masked_kernel(x.dtype, x)[:rows, :kw // 2 + 1 + right]
        if (kh, kw) != (1, 1):
            # [B, H, W, C] → [B, H + d·kh//2, W + d·(kw//2 + right), C]
            x = tf.pad(x, [[0, 0], [d * (kh // 2), 0], [d * (kw // 2), d * right], [0, 0]])
        y = valid_conv2d(x, kernel, d)
        if self.bias is not None:
            y = tf.nn.bias_add(y, tf.cast(self.bias, x.dtype))
        return y


class Conv2D(tf.Module):
    """An unmasked stride-1 convolution with explicit zero padding.

    ``padding = (top, bottom, left, right)``: e.g. a (2, 3) kernel with padding
    (1, 0, 1, 1) makes the output at row i read input rows i-1..i only (a "vertical
    stack" convolution); (0, 0, 0, 0) with a (1, 1) kernel is a dense layer per position.
    ``dilation`` d spaces the taps d pixels apart (the padding is given in pixels: a
    dilated (2, 3) vertical-stack kernel needs (d, 0, d, d)).
    Kernel: truncated normal, stddev sqrt(init_scale / fan_in); bias: zeros.
    """

    def __init__(self, features_out: int, kernel_size: Sequence[int],
                 padding: Sequence[int] = (0, 0, 0, 0), init_scale: float = 1.0,
                 dilation: int = 1, name: Optional[str] = None):
        super().__init__(name=name)
        self.features_out = int(features_out)
        self.kernel_size = tuple(int(k) for k in kernel_size)
        self.padding = tuple(int(p) for p in padding)
        self.dilation = check_dilation(dilation)
        self.init_scale = float(init_scale)
        self.kernel: Optional[tf.Variable] = None
        self.bias: Optional[tf.Variable] = None

    @tf.Module.with_name_scope
    def __call__(self, x: tf.Tensor, padding: Optional[Sequence[int]] = None) -> tf.Tensor:
        """``[B, H, W, C_in]`` → ``[B, H + top + bottom - kh + 1, W + left + right - kw + 1,
        features_out]``; ``padding`` overrides the layer's (e.g. no top padding when the
        input already holds the rows above)."""
        if self.kernel is None:
            c_in = int(x.shape[-1])
            fan_in = self.kernel_size[0] * self.kernel_size[1] * c_in
            shape = (*self.kernel_size, c_in, self.features_out)
            self.kernel = tf.Variable(tf.random.truncated_normal(
                shape, stddev=float(np.sqrt(self.init_scale / fan_in))), name="kernel")
            self.bias = tf.Variable(tf.zeros([self.features_out]), name="bias")
        padding = self.padding if padding is None else tuple(int(p) for p in padding)
        top, bottom, left, right = padding
        if any(padding):
            x = tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])
        y = valid_conv2d(x, tf.cast(self.kernel, x.dtype), self.dilation)
        return tf.nn.bias_add(y, tf.cast(self.bias, x.dtype))


def shift_down(x: tf.Tensor, rows: int = 1) -> tf.Tensor:
    """``[B, H, W, C]`` moved down by ``rows`` (zeros on top): output row i = input row
    i - rows."""
    return tf.pad(x, [[0, 0], [rows, 0], [0, 0], [0, 0]])[:, :-rows]


def split_colour_groups(x: tf.Tensor, n_colors: int, parts: int) -> List[tf.Tensor]:
    """Splits ``[..., n·parts·d]`` (contiguous colour groups) into ``parts`` tensors
    ``[..., n·d]`` that keep the grouping: part p of group g holds channels
    ``g·parts·d + p·d ..`` of the input. Gates built from the parts combine a colour only
    with itself, so colour masks stay valid."""
    d = x.shape[-1] // (n_colors * parts)
    if d * n_colors * parts != x.shape[-1]:
        raise ValueError(f"{x.shape[-1]} channels cannot be split into {n_colors} colour "
                         f"groups of {parts} parts")
    lead = tf.shape(x)[:-1]
    y = tf.reshape(x, tf.concat([lead, [n_colors, parts, d]], 0))  # [..., n, parts, d]
    out = []
    for part in tf.unstack(y, num=parts, axis=-2):
        part = tf.reshape(part, tf.concat([lead, [n_colors * d]], 0))  # [..., n, d] → [..., n·d]
        part.set_shape(x.shape[:-1].concatenate([n_colors * d]))
        out.append(part)
    return out


def gate(x: tf.Tensor, n_colors: int, condition: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Gated activation tanh(a) · sigmoid(b), a and b taken per colour group:
    ``[..., 2·D]`` → ``[..., D]``. ``condition`` ``[B, 2·D]`` is added before the split, so
    each half has its own class projection (equation 4 of the gated PixelCNN paper)."""
    if condition is not None:
        x += per_image(condition, x)
    a, b = split_colour_groups(x, n_colors, 2)
    return tf.tanh(a) * tf.sigmoid(b)



# -- one position at a time ----------------------------------------------------------------
class Position(NamedTuple):
    """The step being evaluated: row ``i``, column ``j``, colour group ``c`` (0 when the
    model has one group). Scalar int32 tensors (or ints)."""
    i: tf.Tensor
    j: tf.Tensor
    c: tf.Tensor


# -- colour groups --------------------------------------------------------------------------
def colour_group(values: tf.Tensor, groups: int, c) -> tf.Tensor:
    """``[N, D]`` (contiguous colour groups) → group ``c``: ``[N, D / groups]``."""
    if groups == 1:
        return values
    d = values.shape[-1]
    grouped = tf.reshape(values, [-1, groups, d // groups])  # [N, D] → [N, groups, D/groups]
    return tf.gather(grouped, c, axis=1)


def with_colour_group(old: tf.Tensor, values: tf.Tensor, c, groups: int) -> tf.Tensor:
    """``old`` ``[N, D]`` with colour group ``c`` replaced by ``values`` ``[N, D / groups]``."""
    if groups == 1:
        return values
    d = old.shape[-1]
    in_group = tf.equal(tf.range(d) // (d // groups), c)[None, :]  # [1, D]
    return tf.where(in_group, tf.tile(values, [1, groups]), old)


def at_position(row_values: tf.Tensor, pos: Position, groups: int) -> tf.Tensor:
    """Per-row values ``[N, W, D]`` → column ``pos.j``, colour group ``pos.c``."""
    return colour_group(tf.gather(row_values, pos.j, axis=1), groups, pos.c)


def record_at(row_values: tf.Tensor, values: tf.Tensor, pos: Position,
              groups: int) -> tf.Tensor:
    """``row_values`` ``[N, W, D]`` with column ``pos.j``, colour group ``pos.c`` replaced
    by ``values`` ``[N, D / groups]`` (the inverse of ``at_position``)."""
    column = with_colour_group(tf.gather(row_values, pos.j, axis=1), values, pos.c, groups)
    here = tf.equal(tf.range(tf.shape(row_values)[1]), pos.j)[None, :, None]  # [1, W, 1]
    return tf.where(here, column[:, None], row_values)


# -- one masked convolution -----------------------------------------------------------------
class ConvStep:
    """A MaskedConv2D at one position and colour group.

    Cache: the layer's input over the rows a masked kxk convolution with dilation d reads
    at row i, i-d·(kh//2)..i, in a ring of R rows (image row r in slot r mod R; R = kh//2
    + 1 without dilation, d·(kh//2 + 1) with it, 1 for a one-row kernel), each
    zero-padded to ``W + 2·d·(kw//2)`` columns: ``[N, R, W + 2·d·(kw//2), C_in]``; for a
    1x1 convolution only the current pixel ``[N, 1, 1, C_in]`` (its earlier colour
    groups). A step writes the input at (i, j) (all of it, or colour group c), reads the
    kh//2 + 1 rows the kernel needs as they lie in the ring (slots i mod d, i mod d + d,
    ..: the rows i - d·a all share i mod d) and every d-th column around j, and multiplies
    by the kernel, rotated to the ring's order, columns of output group c:
    ``[N, C_out / groups]``. Kernels are masked, cut to their top kh//2 + 1 rows, rotated
    and split by output group once, outside the loop. (A small cache matters where the
    loop cannot update it in place, as in the codec's graph-mode loop, which copies it
    every step.)
    """

    def __init__(self, conv: MaskedConv2D, width: int, dtype: tf.DType):
        self.conv = conv
        self.width, self.dtype = width, tf.as_dtype(dtype)
        kh, kw = conv.kernel_size
        self.one_by_one = (kh, kw) == (1, 1)
        d = self.dilation = conv.dilation
        self.kernel_rows = kh // 2 + 1  # the rows the masked kernel reads (and rotations)
        self.rows = 1 if kh == 1 else d * self.kernel_rows  # R: the rows of the ring
        self.pad = d * (kw // 2)  # zero columns on each side of a ring row
        n, c_out = conv.n_colors, conv.features_out
        self.groups = n
        self.c_in = int(conv.kernel.shape[2])
        kernel = conv.masked_kernel(dtype)[:self.kernel_rows]  # [kh//2+1, kw, C_in, C_out]
        # The rows read at row i lie in ring order; kernel row (t - i//d + kh//2) mod
        # (kh//2+1) meets the t-th of them: one copy of the kernel per rotation
        # r = (i//d - kh//2) mod (kh//2+1), rows in ring order, so that a step multiplies
        # the rows as they lie. [rotation, n (group), K, C_out/n].
        q = self.kernel_rows
        rotations = [tf.roll(kernel, shift=r, axis=0) for r in range(q)]
        kernels = tf.reshape(tf.stack(rotations), [q, -1, n, c_out // n])
        kernels = tf.transpose(kernels, [0, 2, 1, 3])  # [q, K, n, ·] → [q, n, K, ·]
        self.weights = tf.reshape(kernels, [q * n, -1, c_out // n])  # [q·n, K, ·]
        bias = conv.bias if conv.bias is not None else tf.zeros([c_out])
        self.biases = tf.reshape(tf.cast(bias, dtype), [n, c_out // n])

    def initial(self, batch) -> tf.Tensor:
        shape = ([batch, 1, 1, self.c_in] if self.one_by_one else
                 [batch, self.rows, self.width + 2 * self.pad, self.c_in])
        return tf.zeros(tf.stack(shape), self.dtype)

    def write(self, cache: tf.Tensor, x: tf.Tensor, pos: Position) -> tf.Tensor:
        """``cache`` with the input at ``pos`` set: ``x`` is all of it ``[N, C_in]`` or its
        colour group ``pos.c`` ``[N, C_in / groups]`` (the groups after it are zeroed). In
        the ring, the next d·(kw//2) columns of the row are zeroed too: they still hold
        row i - R, and the step at ``pos`` reads some of them (with zero weights)."""
        n = tf.shape(x)[0]
        row, col = (0, 0) if self.one_by_one else (pos.i % self.rows, pos.j + self.pad)
        if x.shape[-1] != self.c_in:  # one colour group: keep this pixel's earlier groups
            here = tf.stack([tf.range(n), tf.fill([n], row), tf.fill([n], col)], axis=1)
            earlier = tf.gather_nd(cache, here)  # [N, C_in]; at c = 0 an older pixel's
            earlier = tf.where(pos.c > 0, earlier, tf.zeros_like(earlier))
            x = with_colour_group(earlier, x, pos.c, self.groups)
        span = 1 if self.one_by_one else self.pad + 1  # the pixel, then the zeroed columns
        block = tf.concat([x[:, None], tf.zeros(tf.stack([n, span - 1, self.c_in]), x.dtype)],
                          axis=1)  # [N, span, C_in]
        where = tf.stack([tf.tile(tf.range(n)[:, None], [1, span]),
                          tf.fill(tf.stack([n, span]), row),
                          tf.tile((col + tf.range(span))[None], [n, 1])],
                         axis=-1)  # [N, span, 3] = (n, slot, column)
        return tf.tensor_scatter_nd_update(cache, where, block)

    def step(self, cache: tf.Tensor, x: tf.Tensor, pos: Position):
        """→ (cache, output group ``pos.c`` at ``pos`` ``[N, C_out / groups]``)."""
        cache = self.write(cache, x, pos)
        n = tf.shape(x)[0]
        if self.one_by_one:
            inputs = cache[:, 0, 0, :]  # [N, C_in]
            weights = tf.gather(self.weights, pos.c)  # [K, C_out/groups]
        else:
            kh, kw = self.conv.kernel_size
            d, q = self.dilation, self.kernel_rows
            # The rows the kernel reads, in ring order, columns j-d·(kw//2)..j+d·(kw//2):
            # [N, d·(q-1)+1, d·(kw-1)+1, C_in], then every d-th row and column.
            first, i = (0, pos.i) if d == 1 else (0 if kh == 1 else pos.i % d, pos.i // d)
            patch = tf.slice(cache, tf.stack([0, first, pos.j, 0]),
                             tf.stack([n, d * (q - 1) + 1, d * (kw - 1) + 1, self.c_in]))
            if d > 1:
                patch = patch[:, ::d, ::d]  # [N, q, kw, C_in]
            inputs = tf.reshape(patch, [n, -1])  # [N, q, kw, C_in] → [N, K]
            rotation = (i - kh // 2) % q
            weights = tf.gather(self.weights, rotation * self.groups + pos.c)  # [K, C_out/g]
        return cache, tf.matmul(inputs, weights) + tf.gather(self.biases, pos.c)

