import numpy as np
import pytest

from pixelcnn_tf.nn.masks import get_mask

SPATIAL_3 = np.array([[1, 1, 1],
                      [1, 0, 0],
                      [0, 0, 0]], np.float32)  # the centre is set per colour pair


def spatial_7():
    m = np.zeros((7, 7), np.float32)
    m[:3] = 1
    m[3, :3] = 1
    return m


@pytest.mark.parametrize("mode,centre", [("A", 0.0), ("B", 1.0)])
def test_3x3_one_colour(mode, centre):
    expected = SPATIAL_3.copy()
    expected[1, 1] = centre
    mask = get_mask(3, 1, 1, mode, n_colors=1)
    assert mask.shape == (3, 3, 1, 1) and mask.dtype == np.float32
    np.testing.assert_array_equal(mask[:, :, 0, 0], expected)


@pytest.mark.parametrize("mode,centre", [("A", 0.0), ("B", 1.0)])
def test_7x7_one_colour(mode, centre):
    expected = spatial_7()
    expected[3, 3] = centre
    mask = get_mask(7, 2, 4, mode, n_colors=1)
    assert mask.shape == (7, 7, 2, 4)
    for i in range(2):
        for o in range(4):
            np.testing.assert_array_equal(mask[:, :, i, o], expected)


# Centre connections input colour (rows) → output colour (columns), R|G|B.
CENTRE_A = np.array([[0, 1, 1],
                     [0, 0, 1],
                     [0, 0, 0]], np.float32)
CENTRE_B = np.array([[1, 1, 1],
                     [0, 1, 1],
                     [0, 0, 1]], np.float32)


@pytest.mark.parametrize("kernel,spatial", [(3, SPATIAL_3), (7, spatial_7())])
@pytest.mark.parametrize("mode,centre", [("A", CENTRE_A), ("B", CENTRE_B)])
def test_three_colours(kernel, spatial, mode, centre):
    mask = get_mask(kernel, 3, 3, mode, n_colors=3)
    c = kernel // 2
    for i in range(3):
        for o in range(3):
            expected = spatial.copy()
            expected[c, c] = centre[i, o]
            np.testing.assert_array_equal(mask[:, :, i, o], expected, err_msg=f"{i}->{o}")


def test_groups_are_contiguous_channel_blocks():
    # 6 inputs (R R G G B B) → 9 outputs (R R R G G G B B B), mode B.
    mask = get_mask(3, 6, 9, "B", n_colors=3)
    group_in = np.array([0, 0, 1, 1, 2, 2])
    group_out = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    expected = (group_in[:, None] <= group_out[None, :]).astype(np.float32)
    np.testing.assert_array_equal(mask[1, 1], expected)
    np.testing.assert_array_equal(mask[0], 1.0)  # full row above
    np.testing.assert_array_equal(mask[2], 0.0)  # nothing below


def test_rectangular_kernel_1x3():
    mask = get_mask((1, 3), 1, 1, "B", n_colors=1)
    np.testing.assert_array_equal(mask[:, :, 0, 0], [[1, 1, 0]])


@pytest.mark.parametrize("kwargs,message", [
    (dict(kernel_size=4, features_in=3, features_out=3), "odd"),
    (dict(kernel_size=(3, 2), features_in=3, features_out=3), "odd"),
    (dict(kernel_size=(3, 3, 3), features_in=3, features_out=3), "pair"),
    (dict(kernel_size=3, features_in=4, features_out=3),
     "features_in=4 is not divisible by n_colors=3"),
    (dict(kernel_size=3, features_in=3, features_out=256), "features_out=256 is not divisible"),
    (dict(kernel_size=3, features_in=3, features_out=3, mode="C"), "mode must be 'A' or 'B'"),
    (dict(kernel_size=3, features_in=2, features_out=2, n_colors=2), "n_colors must be 1 or 3"),
])
def test_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        get_mask(**kwargs)
