"""Matplotlib figures: sample grids (PNG files and TensorBoard images) and mask plots.

Figures are drawn with matplotlib's object API on an Agg canvas, so nothing here
touches the global pyplot state or needs a display.
"""
from __future__ import annotations

import io
import math
from typing import Optional

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from pixelcnn_tf.nn.masks import get_mask

COLOUR_NAMES = {1: ("grey",), 3: ("R", "G", "B")}


def image_grid(images: np.ndarray, ncols: Optional[int] = None, pad: int = 1) -> np.ndarray:
    """Tiles uint8 images ``[N, H, W, C]`` into one uint8 image ``[rows·(H+pad)+pad, ..., C]``."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be [N, H, W, C], got shape {images.shape}")
    n, h, w, c = images.shape
    ncols = ncols or int(math.ceil(math.sqrt(n)))
    nrows = int(math.ceil(n / ncols))
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
    for k in range(n):
        r, q = divmod(k, ncols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[top:top + h, left:left + w] = images[k]
    return grid


def grid_figure(images: np.ndarray, title: Optional[str] = None,
                ncols: Optional[int] = None) -> Figure:
    """A figure showing ``images`` (uint8 ``[N, H, W, C]``) as a grid."""
    grid = image_grid(images, ncols)
    fig = Figure(figsize=(6, 6 * grid.shape[0] / grid.shape[1] + (0.4 if title else 0)))
    FigureCanvasAgg(fig)
    ax = fig.add_axes([0, 0, 1, 0.94 if title else 1])
    if grid.shape[-1] == 1:
        ax.imshow(grid[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def figure_to_png(fig: Figure, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_grid(images: np.ndarray, path: str, title: Optional[str] = None) -> None:
    """Writes a PNG grid of uint8 images ``[N, H, W, C]`` to ``path``."""
    with open(path, "wb") as f:
        f.write(figure_to_png(grid_figure(images, title)))


def mask_figure(kernel_size: int = 5, n_colors: int = 3, mode: str = "B") -> Figure:
    """The mask of each (input colour → output colour) pair, as in the PixelRNN paper.

    Row = input colour group, column = output colour group; white taps are connected;
    the centre tap, where mask A and mask B differ, is outlined in red. Returns a Figure:
    save it with ``fig.savefig("mask.png")``.
    """
    mask = get_mask(kernel_size, n_colors, n_colors, mode, n_colors)  # one map per colour
    names = COLOUR_NAMES[n_colors]
    fig = Figure(figsize=(2.0 * n_colors, 2.0 * n_colors + 0.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_colors, n_colors, squeeze=False)
    for i in range(n_colors):
        for o in range(n_colors):
            ax = axes[i][o]
            ax.imshow(mask[:, :, i, o], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{names[i]} → {names[o]}", fontsize=9)
            # The centre tap is where mask A and mask B differ: outline it.
            c = kernel_size // 2
            ax.add_patch(Rectangle((c - 0.5, c - 0.5), 1, 1, fill=False, edgecolor="red",
                                   linewidth=1.5))
    fig.suptitle(f"mask {mode}, {kernel_size}x{kernel_size}: white = connected, "
                 f"red = centre tap", fontsize=9)
    return fig


def completion_figure(originals: np.ndarray, completions: np.ndarray, rows: int,
                      title: Optional[str] = None) -> Figure:
    """One row per image: the original, the given top ``rows`` rows, then completions.

    originals: uint8 ``[N, H, W, C]``; completions: uint8 ``[N, K, H, W, C]``.
    """
    n, k = completions.shape[:2]
    given = originals.copy()
    given[:, rows:] = 128  # the part the model has to fill in, shown grey
    tiles = np.concatenate([originals[:, None], given[:, None], completions], axis=1)
    fig = grid_figure(tiles.reshape(-1, *originals.shape[1:]), title, ncols=k + 2)
    return fig
