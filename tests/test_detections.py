"""The detections CSV contract: columns, precision, companion images list, clear errors."""

import numpy as np
import pandas as pd
import pytest
from conftest import make_wcs_header

from napari_clumps.detections import (
    COLUMNS,
    DetectionsFileError,
    detections_frame,
    read_detections,
    read_images_list,
    write_detections,
)


def test_round_trip_keeps_columns_order_and_precision(tmp_path):
    from astropy.wcs import WCS

    boxes = np.array([[10.123456, 20.5, 26.7, 36.9], [0.0, 0.0, 4.3, 4.3]])
    table = detections_frame(
        "a.fits", boxes, [1, "odd_clump"], [0.91234567, 0.5], wcs=WCS(make_wcs_header()), model="m1"
    )
    empty = detections_frame("b.fits", np.zeros((0, 4)), [], [], model="m1")
    images = pd.DataFrame(
        {"image": ["a.fits", "b.fits"], "status": "ok", "n_detections": [2, 0], "width": 80, "height": 60}
    )
    path = write_detections(pd.concat([table, empty]), tmp_path / "d.csv", images)
    back = read_detections(path)
    assert list(back.columns) == COLUMNS
    assert list(back.label) == ["clump", "odd_clump"]
    np.testing.assert_allclose(back[["x_min", "y_min", "x_max", "y_max"]], boxes, atol=1e-4)
    np.testing.assert_allclose(back.x_center, boxes[:, [0, 2]].mean(axis=1), atol=1e-4)
    np.testing.assert_allclose(back[["ra", "dec"]], table[["ra", "dec"]], atol=1e-8)
    listed = read_images_list(path)
    assert list(listed.image) == ["a.fits", "b.fits"] and list(listed.n_detections) == [2, 0]


def test_bad_label_and_missing_columns_name_the_file(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(",".join(COLUMNS) + "\na.fits,star,1,0,0,1,1,0.5,0.5,,,m\n")
    with pytest.raises(DetectionsFileError, match=r"bad.csv: line 2: label 'star'"):
        read_detections(bad)
    short = tmp_path / "short.csv"
    short.write_text("image,label\n")
    with pytest.raises(DetectionsFileError, match=r"short.csv: missing columns score"):
        read_detections(short)


def test_outputs_get_the_usual_permissions(tmp_path):
    import os
    import stat

    from napari_clumps.model import new_detector, save_model

    old = os.umask(0o022)
    try:
        table = write_detections(detections_frame("a.fits", np.zeros((0, 4)), [], []), tmp_path / "p.csv")
        model = save_model(new_detector("zoobot-convnext_pico", backbone_weights=None), tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(table).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(model).st_mode) == 0o644
