"""Active learning for the review queue: the priority terms, the ranking and its reasons.

Fast tests replace the detector by a stand-in that "detects" bright pixels (scores written in the
green channel), so that the flipped view, the boxes mapped back and the pairing run for real on
known answers; the slow test runs a trained model."""

import math

import numpy as np
import pandas as pd
import pytest

from napari_clumps.active import (
    RANK_COLUMNS,
    STRATEGIES,
    compare_views,
    near_threshold_band,
    near_threshold_weight,
    rank_for_review,
    rank_review_queue,
)
from napari_clumps.detections import detections_frame
from napari_clumps.model import Detector, DetectorConfig

THRESHOLD = 0.3


def stand_in_detector(threshold=THRESHOLD) -> Detector:
    """A detector whose only use here is its threshold (the stand-in below does the detecting)."""
    return Detector(None, DetectorConfig(), {"model_id": "stand-in", "score_threshold": threshold})


def galaxy(spots, size=(40, 50)):
    """An RGB image, black but for 1-pixel spots ``(column, row, score)``: red marks the spot,
    green holds its score (0-255)."""
    rgb = np.zeros(size + (3,), np.uint8)
    for column, row, score in spots:
        rgb[row, column] = (255, round(score * 255), 0)
    return rgb


@pytest.fixture
def detect_spots(monkeypatch):
    """Replace ``iter_detections`` by one that boxes every spot of each view exactly (1 x 1 px,
    pixel-edge convention) with the spot's score. ``seen`` records the views it was given;
    ``blind_left`` makes it miss spots in the left half of every view (a model that a flip
    changes)."""
    from napari_clumps.inference import ImageDetections, as_galaxy_image

    state = {"seen": [], "blind_left": False}

    def fake(views, detector, *, names, score_threshold, keep_off_host, **options):
        for view, name in zip(views, names):
            image = as_galaxy_image(view, name)
            state["seen"].append(image.composite.copy())
            rows, columns = np.nonzero(image.composite[..., 0] == 255)
            scores = image.composite[rows, columns, 1] / 255.0
            keep = scores >= score_threshold
            if state["blind_left"]:
                keep &= columns >= image.width / 2
            boxes = np.column_stack([columns, rows, columns + 1, rows + 1])[keep]
            table = detections_frame(name, boxes, ["clump"] * int(keep.sum()), scores[keep])
            yield ImageDetections(name, table, width=image.width, height=image.height)

    monkeypatch.setattr("napari_clumps.inference.iter_detections", fake)
    return state


def test_near_threshold_weight_peaks_at_the_threshold_and_ends_at_the_band():
    low, high = near_threshold_band(THRESHOLD)
    assert low < THRESHOLD < high
    # symmetric in log-odds: the odds at the edges are the threshold's odds times and over the same factor
    odds = [p / (1 - p) for p in (low, THRESHOLD, high)]
    assert odds[1] / odds[0] == pytest.approx(odds[2] / odds[1])
    weights = near_threshold_weight([THRESHOLD, low, high, 0.01, 0.99, (THRESHOLD + high) / 2], THRESHOLD)
    assert weights[0] == pytest.approx(1)
    np.testing.assert_allclose(weights[1:5], 0, atol=1e-9)
    assert 0 < weights[5] < 1


def table(scores, boxes, name="g"):
    return detections_frame(name, np.asarray(boxes, float).reshape(-1, 4), ["clump"] * len(scores), scores)


def test_compare_views_counts_the_pairs_that_fall_on_different_sides_of_the_threshold():
    box = {name: [x, 0, x + 4, 4] for name, x in (("a", 0), ("b", 10), ("c", 20), ("d", 30), ("e", 40))}
    # a: 0.5 vs 0.2 (split, 0.3); b: 0.9 vs 0.8 (both above); c: only in the original, below the
    # threshold; d: only in the flipped view, above it (split, 0.6); e: only in the original, above (split, 0.7)
    original = table([0.5, 0.9, 0.2, 0.7], [box["a"], box["b"], box["c"], box["e"]])
    flipped = table([0.2, 0.8, 0.6], [box["a"], box["b"], box["d"]])
    terms = compare_views(original, flipped, THRESHOLD)
    assert terms["n_disagreements"] == 3
    assert terms["disagreement"] == pytest.approx(0.3 + 0.6 + 0.7)
    assert terms["n_boxes"] == 3  # the original's at or above the threshold
    # near the threshold (0.14-0.54 for 0.3): 0.5 and 0.2 of the original
    assert (terms["n_near_threshold"], terms["near_threshold_min"], terms["near_threshold_max"]) == (2, 0.2, 0.5)
    assert terms["uncertainty"] == pytest.approx(near_threshold_weight([0.5, 0.2], THRESHOLD).sum())
    assert math.isnan(compare_views(original, None, THRESHOLD)["disagreement"])


def test_boxes_at_the_threshold_rank_above_boxes_far_from_it(detect_spots):
    sure = galaxy([(5, 5, 0.95), (30, 20, 0.9), (40, 30, 0.02)])
    unsure = galaxy([(5, 5, 0.27), (30, 20, 0.33), (40, 30, 0.95)])
    for strategy in ("combined", "uncertainty"):
        ranked = rank_for_review([sure, unsure], stand_in_detector(), names=["sure", "unsure"], strategy=strategy)
        assert ranked.image.tolist() == ["unsure", "sure"]
        assert ranked.set_index("image").priority["sure"] == 0
    ranked = rank_for_review([sure, unsure], stand_in_detector(), names=["sure", "unsure"]).set_index("image")
    # the reason names the numbers: how many boxes, the threshold, their scores (green 69 and 84 of 255)
    assert ranked.reason["unsure"] == "2 boxes with scores near the threshold 0.30 (0.27-0.33); flipped view agrees"
    assert ranked.reason["sure"] == "no boxes near the threshold 0.30; flipped view agrees"
    assert ranked.n_boxes.tolist() == [2, 2]


def test_flipped_view_boxes_map_back_onto_the_originals(detect_spots):
    # 1-pixel boxes: mapped back one pixel off, no pair would overlap and every box would disagree
    ranked = rank_for_review([galaxy([(3, 4, 0.9), (31, 7, 0.6), (49, 39, 0.8)])], stand_in_detector())
    assert ranked.n_disagreements.tolist() == [0]
    assert ranked.reason[0] == "no boxes near the threshold 0.30; flipped view agrees"
    original, flipped = detect_spots["seen"]
    np.testing.assert_array_equal(flipped, original[:, ::-1])


def test_flip_disagreement_is_counted_on_a_model_that_a_flip_changes(detect_spots):
    detect_spots["blind_left"] = True
    # left spot: only the flipped view sees it; right spot: only the original; middle-right spot
    # at 0.2: seen by the original only, but below the threshold in both views, no disagreement
    image = galaxy([(5, 10, 0.9), (40, 10, 0.8), (30, 30, 0.2)])
    ranked = rank_for_review([image], stand_in_detector(), strategy="disagreement")
    assert ranked.n_disagreements[0] == 2
    assert ranked.disagreement[0] == pytest.approx(round(0.9 * 255) / 255 + round(0.8 * 255) / 255)
    assert ranked.priority[0] == ranked.disagreement[0]
    assert ranked.reason[0] == "flipped view disagrees on 2 boxes"


def test_uncertainty_alone_runs_one_view_per_image(detect_spots):
    ranked = rank_for_review([galaxy([(5, 5, 0.3)])] * 3, stand_in_detector(), strategy="uncertainty")
    assert len(detect_spots["seen"]) == 3
    assert ranked.n_disagreements.isna().all()
    assert ranked.reason[0] == "1 box with score near the threshold 0.30 (0.30)"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_ranks_are_a_permutation_and_follow_priority(detect_spots, strategy):
    rng = np.random.default_rng(5)
    images = [galaxy([(int(c), int(r), float(s)) for c, r, s in zip(*rng.integers(0, 40, (2, 4)), rng.random(4))])]
    images += [galaxy([(int(c), int(r), float(s)) for c, r, s in zip(*rng.integers(0, 40, (2, 3)), rng.random(3))])]
    images *= 4  # ties too: equal priorities keep the order given
    names = [f"g{i}" for i in range(len(images))]
    ranked = rank_for_review(images, stand_in_detector(), names=names, strategy=strategy)
    assert ranked.columns.tolist() == RANK_COLUMNS
    assert ranked["rank"].tolist() == list(range(1, len(images) + 1))
    assert sorted(ranked.image) == sorted(names)
    assert (np.diff(ranked.priority) <= 0).all()
    if strategy != "random":
        ties = ranked[ranked.image.isin(["g0", "g2", "g4", "g6"])]
        assert ties.image.tolist() == ["g0", "g2", "g4", "g6"]


def test_random_order_is_seeded_and_runs_no_detector():
    names = [f"g{i}" for i in range(20)]
    images = [np.zeros((8, 8, 3), np.uint8)] * 20
    # a model that does not exist: the random order must not need one
    first = rank_for_review(images, "no-such-model", names=names, strategy="random", seed=3)
    again = rank_for_review(images, "no-such-model", names=names, strategy="random", seed=3)
    other = rank_for_review(images, "no-such-model", names=names, strategy="random", seed=4)
    pd.testing.assert_frame_equal(first, again)
    assert first.image.tolist() != other.image.tolist()
    assert first.reason[0] == "random order (seed 3)"


def test_an_unreadable_image_ranks_last_with_its_error(detect_spots, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    ranked = rank_for_review([broken, galaxy([(1, 1, 0.95)])], stand_in_detector(), names=["broken", "fine"])
    assert ranked.image.tolist() == ["fine", "broken"]
    last = ranked.iloc[-1]
    assert math.isnan(last.priority) and last.error and last.reason == f"not ranked: {last.error}"
    assert "broken.png" in last.error


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="strategy"):
        rank_for_review([galaxy([])], stand_in_detector(), strategy="loudest")


def test_review_queue_ranks_its_unreviewed_images_by_their_names(detect_spots, tmp_path):
    from PIL import Image

    from napari_clumps.review import ReviewSession

    folder = tmp_path / "images"
    folder.mkdir()
    for name, spots in (("a.png", [(5, 5, 0.9)]), ("b.png", [(5, 5, 0.3)]), ("c.png", [(5, 5, 0.28)])):
        Image.fromarray(galaxy(spots)).save(folder / name)
    session = ReviewSession(folder, tmp_path / "labels.csv")
    session.go_to(session.index_of("b.png"))
    session.accept()
    ranked = rank_review_queue(session, stand_in_detector())
    assert ranked.image.tolist() == ["c.png", "a.png"]  # b.png is reviewed; c.png's box is unsure
    assert [session.index_of(name) for name in ranked.image] == [2, 0]
    # a folder by itself names its images as the session does; b.png (its box at the threshold
    # itself) would come first if nobody had reviewed it
    assert rank_for_review(str(folder), stand_in_detector()).image.tolist() == ["b.png", "c.png", "a.png"]


@pytest.mark.slow
def test_a_trained_model_ranks_its_held_out_galaxies(trained_model):
    from napari_clumps.inference import detect
    from napari_clumps.model import get_detector

    path, folder, _ = trained_model
    detector = get_detector(path, "cpu")
    images = sorted(folder.glob("*.fits"))[:6]
    names = [p.name for p in images]
    ranked = rank_for_review(images, detector, names=names, device="cpu").set_index("image")
    assert sorted(ranked["rank"]) == list(range(1, 7)) and (ranked.error == "").all()
    assert np.allclose(ranked.priority, ranked.uncertainty + ranked.disagreement)
    assert (ranked.priority >= 0).all()
    # n_boxes is what the detector shows at its own threshold (the review queue's boxes)
    shown = detect(images, detector, names=names, device="cpu")
    for name in names:
        assert ranked.n_boxes[name] == (shown.image == name).sum()
    # every reason names the model's threshold, and says the flipped view agrees when it does
    for row in ranked.itertuples():
        assert f"{detector.score_threshold:.2f}" in row.reason
        assert ("flipped view agrees" in row.reason) == (row.n_disagreements == 0)
        assert (f"flipped view disagrees on {row.n_disagreements} box" in row.reason) == (row.n_disagreements > 0)
