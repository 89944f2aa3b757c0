"""The pixel-convention conversions (design.md contract)."""
import numpy as np
import pytest

from napari_clumps.pixels import (astropy_to_edge, boxes_to_napari_rectangles, edge_to_astropy,
                                  flip_boxes_vertically, napari_rectangles_to_boxes)


def test_pixel_zero_centre_in_each_convention():
    # pixel (row 0, col 0) covers [0, 1) x [0, 1): its centre is edge (0.5, 0.5)
    assert edge_to_astropy(0.5, 0.5) == (0.0, 0.0)  # astropy: first pixel centre at 0
    assert astropy_to_edge(0.0, 0.0) == (0.5, 0.5)
    # napari: pixel centres at integers, (row, col) order
    (rectangle,) = boxes_to_napari_rectangles([[0, 0, 1, 1]])
    np.testing.assert_array_equal(rectangle.min(axis=0), [-0.5, -0.5])
    np.testing.assert_array_equal(rectangle.mean(axis=0), [0.0, 0.0])


def test_box_to_napari_uses_row_col_order():
    (rectangle,) = boxes_to_napari_rectangles([[10, 20, 14, 30]])  # x 10-14, y 20-30
    np.testing.assert_allclose(rectangle.min(axis=0), [19.5, 9.5])
    np.testing.assert_allclose(rectangle.max(axis=0), [29.5, 13.5])


def test_round_trip_is_exact():
    boxes = np.random.default_rng(0).uniform(0, 200, (50, 4))
    boxes = np.column_stack([np.minimum(boxes[:, 0], boxes[:, 2]), np.minimum(boxes[:, 1], boxes[:, 3]),
                             np.maximum(boxes[:, 0], boxes[:, 2]), np.maximum(boxes[:, 1], boxes[:, 3])])
    back = napari_rectangles_to_boxes(boxes_to_napari_rectangles(boxes))
    np.testing.assert_allclose(back, boxes, atol=1e-9)


def test_flip_vertically_maps_rows_to_height_minus_row():
    flipped = flip_boxes_vertically([[1, 2, 3, 7]], height=10)
    np.testing.assert_array_equal(flipped, [[1, 3, 3, 8]])
    np.testing.assert_array_equal(flip_boxes_vertically(flipped, 10), [[1, 2, 3, 7]])
    with pytest.raises(ValueError):
        flip_boxes_vertically([[1, 2, 3]], 10)
