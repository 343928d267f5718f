"""Causal convolution masks with the R|G|B colour split of the PixelRNN paper.

A masked convolution sees only pixels above the current one, pixels to its left on
the same row, and, at the centre position, only the colour channels that come
before (mask "A") or up to and including (mask "B") the output's own colour.

Feature maps are split into ``n_colors`` contiguous groups: with 3 colours and 6
features, features 0-1 belong to R, 2-3 to G and 4-5 to B.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np

KernelSize = Union[int, Sequence[int]]

MODES = ("A", "B")


def _kernel_hw(kernel_size: KernelSize) -> tuple[int, int]:
    if isinstance(kernel_size, (int, np.integer)):
        kh = kw = int(kernel_size)
    else:
        sizes = tuple(int(k) for k in kernel_size)
        if len(sizes) != 2:
            raise ValueError(
                f"kernel_size must be an int or a (height, width) pair, got {kernel_size!r}")
        kh, kw = sizes
    if kh < 1 or kw < 1 or kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(
            f"kernel_size must be odd and positive so the kernel has a centre, got "
            f"{kernel_size!r}; use e.g. 3, 5, 7 or (1, 3)")
    return kh, kw


def colour_groups(features: int, n_colors: int, what: str = "features") -> np.ndarray:
    """Colour-group index of each of ``features`` channels, shape ``[features]``."""
    if features < 1:
        raise ValueError(f"{what} must be positive, got {features}")
    if features % n_colors != 0:
        raise ValueError(
            f"{what}={features} is not divisible by n_colors={n_colors}: masked layers "
            f"split channels into {n_colors} equal colour groups; pick a multiple of "
            f"{n_colors}")
    return np.arange(features) // (features // n_colors)


def get_mask(kernel_size: KernelSize, features_in: int, features_out: int,
             mode: str = "B", n_colors: int = 3) -> np.ndarray:
    """Returns the causal mask of a masked convolution.

    Args:
      kernel_size: odd int or (height, width) of odd ints.
      features_in: input channels, a multiple of ``n_colors``.
      features_out: output channels, a multiple of ``n_colors``.
      mode: "A" (first layer: the centre never connects a colour to itself) or "B"
        (later layers: the centre connects each colour group to itself and later ones).
      n_colors: 1 (grey) or 3 (R|G|B).

    Returns:
      float32 array ``[kh, kw, features_in, features_out]`` of zeros and ones.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be 'A' or 'B', got {mode!r}")
    if n_colors not in (1, 3):
        raise ValueError(f"n_colors must be 1 or 3, got {n_colors!r}")
    kh, kw = _kernel_hw(kernel_size)
    group_in = colour_groups(features_in, n_colors, "features_in")
    group_out = colour_groups(features_out, n_colors, "features_out")

    mask = np.zeros((kh, kw, features_in, features_out), dtype=np.float32)
    ci, cj = kh // 2, kw // 2
    mask[:ci] = 1.0  # every row above the centre
    mask[ci, :cj] = 1.0  # left of the centre on the centre row
    # Centre: input group g_in may feed output group g_out if it comes earlier
    # (or is the same group, for mode B).
    if mode == "A":
        centre = group_in[:, None] < group_out[None, :]
    else:
        centre = group_in[:, None] <= group_out[None, :]
    mask[ci, cj] = centre.astype(np.float32)
    return mask
