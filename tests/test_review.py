"""The review queue (headless): every change is in the labels CSV at once, undo and resume."""

import numpy as np
import pytest

from napari_clumps.detections import (
    BOX_COLUMNS,
    HAND_MODEL,
    REVIEW_STATUS_COLUMN,
    read_detections,
    read_images_list,
)
from napari_clumps.review import ReviewSession, training_images
from napari_clumps.simulate import TRUTH_MODEL_ID, write_dataset

SEED = 3  # three galaxies with 3 boxes each, clumps and odd clumps


@pytest.fixture
def queue(tmp_path):
    """(FITS paths, truth table by CSV name, labels CSV path) of three simulated galaxies."""
    truth = read_detections(write_dataset(tmp_path / "images", n=3, seed=SEED))
    paths = sorted((tmp_path / "images").glob("*.fits"))
    by_name = {str(p): truth[truth.image == p.name].assign(image=str(p)).reset_index(drop=True) for p in paths}
    return paths, by_name, tmp_path / "labels.csv"


def saved(path):
    """(rows as (image, label, model, score, box) tuples, {image: (review status, n_detections)})."""
    table = read_detections(path)
    rows = [
        (r.image, r.label, r.model, round(r.score, 5), tuple(np.round([getattr(r, c) for c in BOX_COLUMNS], 4)))
        for r in table.itertuples()
    ]
    listed = read_images_list(path)
    return rows, {r.image: (getattr(r, REVIEW_STATUS_COLUMN), r.n_detections) for r in listed.itertuples()}


def rows_of(table):
    return [
        (r.image, r.label, r.model, round(r.score, 5), tuple(np.round([getattr(r, c) for c in BOX_COLUMNS], 4)))
        for r in table.itertuples()
    ]


def test_every_step_is_in_the_csv_and_undo_restores_the_file(queue):
    paths, truth, csv = queue
    a, b, c = (str(p) for p in paths)
    session = ReviewSession(paths, csv)
    assert session.current == 0 and session.progress == (0, 3)

    # the model's boxes for the first image (truth here, score 1, model simulation-truth)
    session.set_boxes(a, truth[a])
    rows, status = saved(csv)
    assert rows == rows_of(truth[a])
    assert status == {a: ("unreviewed", 3), b: ("unreviewed", 0), c: ("unreviewed", 0)}

    # the same boxes again (a layer reporting an edit twice) change nothing: no save, no undo step
    session.set_boxes(a, truth[a])
    assert len(session._undo) == 1

    # accept: reviewed, the model's boxes and scores kept as they are
    session.accept()
    rows, status = saved(csv)
    assert rows == rows_of(truth[a]) and {r[2] for r in rows} == {TRUTH_MODEL_ID}
    assert status[a] == ("reviewed", 3) and session.progress == (1, 3)

    # second image: delete its second box, add a hand box, toggle the added box to odd clump
    session.next()
    session.set_boxes(b, truth[b])
    session.delete_box(1)
    kept = truth[b].drop(index=1)
    assert saved(csv)[0] == rows_of(truth[a]) + rows_of(kept)
    before_add = csv.read_bytes(), csv.with_name("labels.images.csv").read_bytes()
    new = session.add_box(100.0, 80.0, 12.0)
    hand_row = (b, "clump", HAND_MODEL, 1.0, (94.0, 74.0, 106.0, 86.0))
    assert new == 2 and saved(csv)[0] == rows_of(truth[a]) + rows_of(kept) + [hand_row]
    assert session.toggle_label(new) == ["odd_clump"]
    assert saved(csv)[0][-1] == (b, "odd_clump", HAND_MODEL, 1.0, (94.0, 74.0, 106.0, 86.0))
    session.accept()
    assert saved(csv)[1][b] == ("reviewed", 3)

    # third image: no clumps, although the model found some
    session.next()
    session.set_boxes(c, truth[c])
    # several boxes toggled at once are one change, undone at once
    labels_before = list(session.items[2].labels)
    session.toggle_label([0, 1, 2])
    assert [r[1] for r in saved(csv)[0][6:]] == [{"clump": "odd_clump", "odd_clump": "clump"}[v] for v in labels_before]
    session.undo()
    assert [r[1] for r in saved(csv)[0][6:]] == labels_before

    session.mark_no_clumps()
    rows, status = saved(csv)
    assert [r[0] for r in rows] == [a] * 3 + [b] * 3
    assert status[c] == ("reviewed", 0) and session.progress == (3, 3)

    # undo, step by step: no clumps -> the model's boxes -> nothing; accept of b; toggle; add
    session.undo()
    assert saved(csv)[0][6:] == rows_of(truth[c]) and saved(csv)[1][c] == ("unreviewed", 3)
    session.undo()
    assert len(saved(csv)[0]) == 6 and saved(csv)[1][c] == ("unreviewed", 0)
    session.undo()
    assert saved(csv)[1][b] == ("unreviewed", 3) and session.current == 1
    session.undo()
    assert saved(csv)[0][-1] == hand_row
    session.undo()  # the add: the files are byte for byte what they were before it
    assert (csv.read_bytes(), csv.with_name("labels.images.csv").read_bytes()) == before_add
    assert session.progress == (1, 3)


def test_a_crash_loses_nothing_and_reopening_resumes(queue):
    paths, truth, csv = queue
    a, b, c = (str(p) for p in paths)
    session = ReviewSession(paths, csv)
    session.set_boxes(a, truth[a])
    session.set_label(0, "odd_clump")
    session.accept()
    session.next()
    session.set_boxes(b, truth[b])  # detected, not yet reviewed
    expected = saved(csv)
    del session  # a crash: no close, no final save

    resumed = ReviewSession(paths, csv)
    assert saved(csv) == expected  # opening writes nothing new
    assert resumed.current == 1 and resumed.progress == (1, 3)  # the first unreviewed image
    first = resumed.items[0]
    assert first.status == "reviewed"
    assert first.labels == ["odd_clump", *truth[a].label[1:]]
    np.testing.assert_allclose(first.boxes, truth[a][BOX_COLUMNS].to_numpy(), atol=1e-4)
    assert resumed.items[1].status == "unreviewed" and resumed.items[1].n_boxes == 3
    assert resumed.items[1].models == [TRUTH_MODEL_ID] * 3
    # going on after the resume keeps what was there
    resumed.mark_no_clumps()
    rows, status = saved(csv)
    assert [r[0] for r in rows] == [a] * 3 and rows[0][1] == "odd_clump"
    assert status == {a: ("reviewed", 3), b: ("reviewed", 0), c: ("unreviewed", 0)}


def test_rows_of_images_outside_the_session_are_kept(queue):
    paths, truth, csv = queue
    ReviewSession(paths, csv).set_boxes(str(paths[2]), truth[str(paths[2])])
    session = ReviewSession(paths[:2], csv)  # reopened on fewer images
    session.mark_no_clumps()
    rows, status = saved(csv)
    assert [r[0] for r in rows] == [str(paths[2])] * 3
    assert status[str(paths[0])] == ("reviewed", 0) and status[str(paths[2])] == ("unreviewed", 3)


def test_typical_box_side(queue):
    paths, truth, csv = queue
    session = ReviewSession(paths, csv)
    assert session.typical_box_side() == pytest.approx(16.6)  # nothing known: the simulator's median at 200 px
    session.add_box(50, 50, 10)
    session.add_box(80, 50, 14)
    session.add_box(20, 30, 30)
    assert session.typical_box_side() == pytest.approx(14.0)

    class Small:
        width, height, header, wcs = 100, 100, None, None

    assert session.typical_box_side(1, Small()) == pytest.approx(8.3)

    class WithPsf(Small):
        header = {"PSFFWHM": 4.0}

    assert session.typical_box_side(1, WithPsf()) == pytest.approx(10.0)  # 2.5 x FWHM


def test_training_takes_only_reviewed_images(queue):
    from napari_clumps.training import load_labelled_images

    paths, truth, csv = queue
    session = ReviewSession(paths, csv)
    session.set_boxes(str(paths[0]), truth[str(paths[0])])
    session.accept()
    session.next()
    session.set_boxes(str(paths[1]), truth[str(paths[1])])  # model boxes, not reviewed: not a label
    items, notes = load_labelled_images(paths, csv)
    assert [item.name for item in items] == [str(paths[0])]
    assert len(items[0].boxes) == 3
    assert any("not reviewed" in note for note in notes)


def test_the_queue_trains_on_what_the_labels_csv_gives_the_cli(queue):
    """The review widget's fine-tuning (training_images of the reviewed items) and ``train --labels``
    on the saved CSV see the same images, boxes and classes, cleaned the same way."""
    from napari_clumps.training import load_labelled_images

    paths, truth, csv = queue
    session = ReviewSession(paths, csv)
    session.set_boxes(str(paths[0]), truth[str(paths[0])])
    session.add_box(-4.0, 10.0, 12.0)  # reaches outside the image: clipped, as from the CSV
    session.toggle_label([0])
    session.accept()
    session.go_to(2)
    session.mark_no_clumps()
    session.go_to(1)
    session.set_boxes(str(paths[1]), truth[str(paths[1])])  # model boxes of an unreviewed image
    reviews = session.reviewed_items()
    assert [r.name for r in reviews] == [str(paths[0]), str(paths[2])]
    from_queue, queue_notes = training_images(reviews)
    from_csv, _ = load_labelled_images(paths, csv)
    assert [i.name for i in from_queue] == [i.name for i in from_csv]
    for mine, theirs in zip(from_queue, from_csv):
        np.testing.assert_allclose(mine.boxes, theirs.boxes)
        assert list(mine.labels) == list(theirs.labels)
    assert (
        len(from_queue[0].boxes) == 4
        and from_queue[0].labels[0] != truth[str(paths[0])].label.map({"clump": 1, "odd_clump": 2}).iloc[0]
    )
    assert len(from_queue[1].boxes) == 0 and any("clipped" in note for note in queue_notes)
    # the copies are the worker's own: later edits in the queue do not reach them
    session.go_to(0)
    session.delete_box(0)
    assert len(reviews[0].boxes) == 4


def test_ra_dec_are_written_once_the_image_is_described(queue):
    from napari_clumps.io import read_image

    paths, truth, csv = queue
    a = str(paths[0])
    session = ReviewSession(paths, csv)
    session.set_boxes(a, truth[a])
    assert read_detections(csv)[["ra", "dec"]].isna().all().all()  # the WCS is not known yet
    session.describe_image(a, read_image(paths[0]))
    session.accept()
    saved_rows = read_detections(csv)
    np.testing.assert_allclose(saved_rows[["ra", "dec"]].to_numpy(), truth[a][["ra", "dec"]].to_numpy(), atol=1e-8)
    assert read_images_list(csv).loc[0, ["width", "height"]].tolist() == [200, 200]


def test_a_detections_csv_opens_as_a_queue_of_unreviewed_model_boxes(tmp_path):
    """The CSV of ``napari-clumps detect`` (here the simulator's, same format, no review column)."""
    truth_csv = write_dataset(tmp_path, n=3, seed=SEED)
    truth = read_detections(truth_csv)
    session = ReviewSession(tmp_path, truth_csv)  # a folder: names relative to it, as in the CSV
    assert len(session) == 6 and session.progress == (0, 6) and session.current == 0
    assert session.items[0].name == "sim_00000.fits" and session.items[0].n_boxes == 3
    session.accept()
    rows, status = saved(truth_csv)
    assert rows == rows_of(truth)  # every box kept, model ids and scores too
    assert status["sim_00000.fits"] == ("reviewed", 3) and status["sim_00000.jpg"] == ("unreviewed", 3)
    # the images list's own extra columns stay
    listed = read_images_list(truth_csv)
    assert {"psf_fwhm_px", "seed", "index"} <= set(listed.columns) and listed.seed.tolist() == [SEED] * 6


def test_evaluate_counts_only_reviewed_images_of_a_review_csv(queue, tmp_path):
    import pandas as pd

    from napari_clumps.detections import write_detections
    from napari_clumps.metrics import evaluate

    paths, truth, csv = queue
    a, b = str(paths[0]), str(paths[1])
    session = ReviewSession(paths, csv)
    session.set_boxes(a, truth[a])
    session.accept()
    session.set_boxes(b, truth[b])  # the model's boxes for b, not reviewed: no truth
    detections = write_detections(pd.concat([truth[a], truth[b]]), tmp_path / "detections.csv")
    scores = evaluate(csv, detections)["at_threshold"]
    assert (scores["n_truth"], scores["n_detections"], scores["n_matched"]) == (3, 3, 3)


def test_an_active_learning_ranking_orders_the_queue_and_survives_a_restart(queue):
    import pandas as pd

    paths, _, csv = queue
    names = [str(p) for p in paths]
    session = ReviewSession(paths, csv)
    session.mark_no_clumps()  # the first image, reviewed before the ranking
    ranking = pd.DataFrame({"image": [names[2], names[1]], "rank": [1, 2], "reason": ["most unsure", "less so"]})
    session.set_ranking(ranking)
    assert [session.items[i].name for i in session.order] == [names[0], names[2], names[1]]
    session.go_to(0)
    assert session.next_unreviewed().name == names[2] and session.item.reason == "most unsure"
    assert session.next().name == names[1] and session.next().name == names[1]  # the end of the queue
    assert session.previous().name == names[2]
    listed = read_images_list(csv).set_index("image")
    assert listed.review_rank.isna()[names[0]] and listed.review_rank[names[2]] == 1
    assert listed.review_reason[names[1]] == "less so"
    resumed = ReviewSession(paths, csv)
    assert resumed.item.name == names[2]  # the first unreviewed in the ranked order
    assert [resumed.items[i].name for i in resumed.order] == [names[0], names[2], names[1]]
    assert resumed.items[2].reason == "most unsure" and resumed.items[0].rank is None
    resumed.accept()
    assert resumed.next_unreviewed().name == names[1]
    assert list(read_images_list(csv).columns).count("review_reason") == 1  # not kept twice as an extra column
