import numpy as np

from pixelcnn_tf import viz


def test_image_grid_layout():
    images = np.stack([np.full((2, 3, 1), k, np.uint8) for k in range(5)])
    grid = viz.image_grid(images, ncols=3, pad=1)
    assert grid.shape == (2 * 3 + 1, 3 * 4 + 1, 1)
    assert grid[1, 1, 0] == 0 and grid[1, 5, 0] == 1 and grid[4, 1, 0] == 3
    assert grid[0, 0, 0] == 255  # padding


def test_save_grid_writes_png(tmp_path):
    path = tmp_path / "s.png"
    viz.save_grid(np.zeros((4, 5, 5, 3), np.uint8), str(path), title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mask_figure_has_one_panel_per_colour_pair():
    fig = viz.mask_figure(5, 3, "A")
    assert len(fig.axes) == 9
    assert fig.axes[1].get_title() == "R → G"
    png = viz.figure_to_png(fig)
    assert png[:4] == b"\x89PNG"


def test_completion_figure_layout():
    originals = np.zeros((2, 4, 4, 1), np.uint8)
    completions = np.zeros((2, 3, 4, 4, 1), np.uint8)
    fig = viz.completion_figure(originals, completions, rows=2, title="c")
    assert viz.figure_to_png(fig)[:4] == b"\x89PNG"
