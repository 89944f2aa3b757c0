"""The clumps layer's score filter: built filtered (what Detect does) equals built whole, then filtered."""

import numpy as np
import pytest

from napari_clumps._layers import (
    HAND_MODEL,
    apply_score_threshold,
    detections_layer,
    with_score_threshold,
)
from napari_clumps.detections import detections_frame


def six_boxes():
    boxes = [[10 * i, 5, 10 * i + 6, 12] for i in range(6)]
    models = ["m", "m", "m", "m", HAND_MODEL, "m"]
    table = detections_frame(
        "galaxy.fits",
        boxes,
        ["clump", "odd_clump", "clump", "clump", "clump", "odd_clump"],
        [0.9, 0.2, 0.6, 0.05, 1.0, 0.7],
        model=models,
    )
    table["on_host"] = [True, True, True, True, True, False]
    return table


def layer_of(data, kwargs):
    from napari.layers import Shapes

    return Shapes(data, **kwargs)


def state(layer):
    pool = layer.metadata["below_threshold"]
    rows = [] if pool is None else zip(pool["label"], pool["score"], pool["_vertices"])
    hidden = [(label, score, np.asarray(vertices).tolist()) for label, score, vertices in rows]
    return (
        [np.asarray(v).tolist() for v in layer.data],
        layer.features[["label", "score", "model", "on_host", "score_text"]].to_dict("list"),
        layer.edge_color.tolist(),
        sorted(hidden),
        layer.metadata["score_threshold"],
        layer.metadata["keep_off_host"],
        layer.metadata["n_boxes_seen"],
    )


@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.65, 0.95, 1.01])
@pytest.mark.parametrize("keep_off_host", [False, True])
def test_a_layer_built_filtered_is_the_layer_filtered_after(threshold, keep_off_host):
    data, kwargs, _ = detections_layer(six_boxes(), image_name="galaxy.fits", transform={}, height=20, width=70)
    whole = layer_of(data, kwargs)
    apply_score_threshold(whole, threshold, keep_off_host)
    built = layer_of(*with_score_threshold(data, kwargs, threshold, keep_off_host))
    assert state(built) == state(whole)
    n_shown = len(built.data)
    assert 1 <= n_shown <= 6  # the hand box always stays
    # and the hidden boxes come back from the pool alike
    for layer in (whole, built):
        apply_score_threshold(layer, 0.0, True)
    assert state(built) == state(whole) and len(built.data) == 6
