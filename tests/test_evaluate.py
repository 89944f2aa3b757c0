"""Matching and completeness / purity, against hand-computed numbers."""

import json

import pandas as pd
import pytest

from napari_clumps.cli import main
from napari_clumps.detections import detections_frame, write_detections
from napari_clumps.metrics import box_iou, match_image, scores_table


def _truth():
    return pd.concat(
        [
            detections_frame("a.fits", [[10, 10, 20, 20], [50, 50, 60, 60], [80, 80, 90, 90]], ["clump"] * 3, 1.0),
            detections_frame("b.fits", [[5, 5, 15, 15]], ["odd_clump"], 1.0),
        ],
        ignore_index=True,
    )


def test_iou_of_known_boxes():
    assert box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10]])[0, 0] == pytest.approx(50 / 150)
    assert box_iou([[0, 0, 10, 10]], [[20, 20, 30, 30]])[0, 0] == 0


def test_perfect_detections_give_one(tmp_path, capsys):
    truth = _truth()
    write_detections(truth, tmp_path / "truth.csv")
    write_detections(truth.assign(score=0.9), tmp_path / "det.csv")
    assert main(["evaluate", "--truth", str(tmp_path / "truth.csv"), "--detections", str(tmp_path / "det.csv")]) == 0
    result = json.loads((tmp_path / "det.metrics.json").read_text())["at_threshold"]
    assert result["completeness"] == 1 and result["purity"] == 1 and result["f1"] == 1


def test_known_misses_and_false_positives(tmp_path):
    truth = _truth()
    detections = pd.concat(
        [
            detections_frame(
                "a.fits",
                [
                    [11, 11, 21, 21],  # matches truth 0 (IoU 0.68)
                    [12, 10, 22, 20],  # second on truth 0: a duplicate, false positive
                    [100, 100, 110, 110],
                ],  # nothing there: false positive
                ["clump"] * 3,
                [0.9, 0.8, 0.7],
            ),
            detections_frame("b.fits", [[5, 5, 15, 15]], ["clump"], [0.2]),  # matches, but low score
        ],
        ignore_index=True,
    )
    table = scores_table(truth, detections, thresholds=[0.1, 0.5])
    low, high = table.iloc[0], table.iloc[1]
    # threshold 0.1: 4 truth, 4 detections, 2 matches
    assert (low.completeness, low.purity, low.f1) == (0.5, 0.5, 0.5)
    # threshold 0.5: 4 truth, 3 detections, 1 match
    assert high.completeness == pytest.approx(1 / 4) and high.purity == pytest.approx(1 / 3)
    assert high.f1 == pytest.approx(2 * 1 / (4 + 3))


def test_greedy_by_score_and_centre_rule():
    truth = [[0, 0, 10, 10]]
    dets = [[1, 1, 11, 11], [0, 0, 10, 10]]
    match = match_image(truth, dets, [0.5, 0.9])
    assert match.detection_matched.tolist() == [False, True]  # the higher score wins
    assert match.detection_partner.tolist() == [-1, 0]
    # a shifted small box: fails IoU 0.3 but its centre is inside the truth's half side
    shifted = [[4, 4, 12, 12]]
    assert match_image(truth, shifted, rule="iou", iou_threshold=0.5).n_matched == 0
    assert match_image(truth, shifted, rule="centre").n_matched == 1
    assert match_image(truth, [[9, 9, 19, 19]], rule="centre").n_matched == 0
    # the larger of the two boxes sets the distance: a 20 px detection centred 9.4 px away matches
    assert match_image(truth, [[0, 3, 20, 23]], rule="centre").n_matched == 1
    assert match_image(truth, [[5, 8, 15, 18]], rule="centre").n_matched == 0
