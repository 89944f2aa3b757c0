"""The detector (core, CPU, no network): architectures, model files, paper checkpoints, inference."""

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_clumps.detections import box_array
from napari_clumps.inference import detect, iter_detections, tile_windows
from napari_clumps.metrics import box_iou, scores_table
from napari_clumps.model import (
    BACKBONES,
    ModelError,
    build_detector,
    config_for,
    load_model,
    load_paper_checkpoint,
    new_detector,
    save_model,
    select_device,
)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_builtin_architecture_builds_and_runs(name):
    config = config_for(name)
    network = build_detector(config, backbone_weights=None).eval()
    for size in (200, 424):
        with torch.inference_mode():
            (out,) = network([torch.rand(config.in_chans, size, size)])
        assert out["boxes"].shape[1] == 4 and len(out["boxes"]) == len(out["scores"]) == len(out["labels"])
        assert ((out["boxes"] >= 0) & (out["boxes"] <= size)).all()
        assert set(out["labels"].tolist()) <= {1, 2}


def test_zoobot_configs_use_raw_0_1_inputs_and_paper_uses_imagenet():
    for name in BACKBONES:
        config = config_for(name)
        if name.startswith("zoobot"):
            assert set(config.image_mean) == {0.0} and set(config.image_std) == {1.0}
            assert config.hub_id == f"hf_hub:mwalmsley/zoobot-encoder-{name.removeprefix('zoobot-')}"
    paper = config_for("paper-resnet50-fpn")
    assert paper.image_mean == (0.485, 0.456, 0.406) and paper.min_size == 800


def _paper_style_model():
    """Built exactly as the paper's code builds it (torchvision model, 3-class predictor, DataParallel)."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    torch.manual_seed(3)
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    in_features = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(in_features, 3)
    return torch.nn.DataParallel(model)


def test_paper_checkpoint_round_trips(tmp_path):
    wrapped = _paper_style_model()
    path = tmp_path / "paper_checkpoint.pt"
    torch.save(wrapped.state_dict(), path)
    assert next(iter(torch.load(path, weights_only=True))).startswith("module.")
    detector = load_paper_checkpoint(path)
    image = [torch.rand(3, 200, 200, generator=torch.Generator().manual_seed(1))]
    reference = wrapped.module.eval()
    reference.roi_heads.score_thresh = detector.network.roi_heads.score_thresh
    with torch.inference_mode():
        (expected,), (got,) = reference(image), detector.network(image)
    torch.testing.assert_close(got["boxes"], expected["boxes"])
    torch.testing.assert_close(got["scores"], expected["scores"])
    assert load_model(path).config.backbone == "paper-resnet50-fpn"  # .pt goes the same way


def test_model_file_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    detector = new_detector("zoobot-convnext_pico", backbone_weights=None)
    detector.network.roi_heads.score_thresh = 0.0  # untrained: keep every box to compare
    detector.provenance["note"] = "round trip"
    path = save_model(detector, tmp_path / "m.safetensors")
    loaded = load_model(path)
    loaded.network.roi_heads.score_thresh = 0.0
    assert loaded.config == detector.config and loaded.provenance["note"] == "round trip"
    image = [torch.rand(3, 200, 200, generator=torch.Generator().manual_seed(2))]
    detector.network.eval()
    with torch.inference_mode():
        (a,), (b,) = detector.network(image), loaded.network(image)
    assert len(a["boxes"]) > 0
    torch.testing.assert_close(a["boxes"], b["boxes"])
    torch.testing.assert_close(a["scores"], b["scores"])


def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Exploit()}, path)
    with pytest.raises(ModelError, match="refused"):
        load_model(path)
    assert not marker.exists()
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="junk.safetensors: not a napari-clumps model file"):
        load_model(junk)


def test_backbone_weights_from_a_local_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(5)
    encoder = timm.create_model("convnext_pico", pretrained=False, num_classes=0)
    path = tmp_path / "zoobot_convnext_pico.safetensors"
    save_file(encoder.state_dict(), str(path))
    detector = new_detector("zoobot-convnext_pico", backbone_weights=path)
    loaded = detector.network.backbone.body.state_dict()
    torch.testing.assert_close(loaded["stem.0.weight"], encoder.state_dict()["stem.0.weight"])
    with pytest.raises(ModelError, match="backbone weights file not found"):
        new_detector("zoobot-convnext_pico", backbone_weights=tmp_path / "missing.safetensors")


def test_backbone_weights_from_a_zoobot_checkpoint(tmp_path):
    """A Zoobot (Lightning) checkpoint goes through zoobot's own loader; its encoder is ours."""
    import lightning
    from zoobot.pytorch.estimators.define_model import ZoobotTree

    torch.manual_seed(6)
    tree = ZoobotTree(
        output_dim=2,
        question_answer_pairs={"smooth-or-featured": ["_smooth", "_featured-or-disk"]},
        dependencies={"smooth-or-featured": None},
        architecture_name="convnext_pico",
    )
    trainer = lightning.Trainer(
        logger=False,
        enable_checkpointing=False,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.strategy.connect(tree)
    path = tmp_path / "zoobot_tree.ckpt"
    trainer.save_checkpoint(path)
    detector = new_detector("zoobot-convnext_pico", backbone_weights=path)
    loaded = detector.network.backbone.body.state_dict()
    expected = tree.encoder.state_dict()
    assert len(loaded) > 100
    for name, value in loaded.items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="junk.ckpt: not a Zoobot checkpoint"):
        new_detector("zoobot-convnext_pico", backbone_weights=junk)


def test_offline_hub_error_says_what_to_place_where(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError) as info:
        new_detector("zoobot-convnext_nano", backbone_weights="hub")
    message = str(info.value)
    assert "hf_hub:mwalmsley/zoobot-encoder-convnext_nano" in message
    assert "model.safetensors" in message and "--backbone-weights" in message and "\n" not in message


def test_device_auto_falls_back_to_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert select_device("auto").type == "cpu"
    with pytest.raises(ModelError, match="no CUDA GPU"):
        select_device("cuda")
    assert select_device("cpu").type == "cpu"


def test_tiles_cover_the_image_with_overlap():
    windows = tile_windows(2000, 1300, 512, 64)
    covered = np.zeros((2000, 1300), bool)
    for y0, x0, y1, x1 in windows:
        assert y1 - y0 <= 512 and x1 - x0 <= 512
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    assert tile_windows(200, 200, 512, 64) == [(0, 0, 200, 200)]


@pytest.mark.slow
def test_trained_detector_finds_held_out_clumps(trained_model):
    """Measured when written (seed fixed): completeness 0.79, purity 0.74 at score 0.5 (24 galaxies)."""
    path, folder, truth = trained_model
    fits_files = sorted(folder.glob("*.fits"))
    found = detect([str(p) for p in fits_files], path, score_threshold=0.05)
    found["image"] = [p.split("/")[-1] for p in found.image]
    fits_truth = truth[truth.image.str.endswith(".fits")]
    row = scores_table(fits_truth, found, thresholds=[0.5], images=[p.name for p in fits_files]).iloc[0]
    assert row.completeness >= 0.6 and row.purity >= 0.5, row.to_dict()


@pytest.mark.slow
def test_large_field_is_tiled_and_boxes_land_in_place(trained_model):
    """Nine held-out galaxies in a 3 x 3 mosaic (600 x 600, tiled at 256 px): the same clumps."""
    from napari_clumps.io import read_image
    from napari_clumps.model import get_detector

    path, folder, truth = trained_model
    detector = get_detector(str(path), "cpu")
    detector.config.tile_size, detector.config.tile_overlap = 256, 64
    names = [f"sim_{i:05d}.jpg" for i in range(9)]
    mosaic = np.zeros((600, 600, 3), np.uint8)
    mosaic_truth = []
    for k, name in enumerate(names):
        oy, ox = 200 * (k // 3), 200 * (k % 3)
        mosaic[oy : oy + 200, ox : ox + 200] = read_image(folder / name).composite
        rows = truth[truth.image == name]
        mosaic_truth.append(rows[["x_min", "y_min", "x_max", "y_max"]].to_numpy() + [ox, oy, ox, oy])
    try:
        # a mosaic of nine galaxies is a field, not a cutout of one host: keep every detection
        found = detect(mosaic, detector, names=["mosaic"], score_threshold=0.5, keep_off_host=True)
        per_tile = detect([read_image(folder / n) for n in names], detector, score_threshold=0.5)
    finally:
        detector.config.tile_size, detector.config.tile_overlap = 512, 64
    import pandas as pd

    truth_table = pd.DataFrame(np.concatenate(mosaic_truth), columns=["x_min", "y_min", "x_max", "y_max"])
    truth_table["image"], truth_table["score"] = "mosaic", 1.0
    in_mosaic = scores_table(truth_table, found, thresholds=[0.5]).iloc[0]
    # tiling loses at most a little against running each galaxy alone, measured on the truth:
    # boxes land on their clumps (IoU 0.5) as often. Not the same boxes one for one: those
    # scoring near the threshold come and go with what surrounds a galaxy, here its eight
    # neighbours (seen lost: 0.54-0.60 with one test model, 0.74-0.81 with another, while the
    # completeness on the truth was the same alone and tiled, 0.71). Nor the purity: the
    # neighbours' context adds false boxes with some models (seen: 24 boxes in the mosaic against
    # 18 alone, the same 13 true) and none with others; what tiling itself must not add, a box
    # found twice where tiles overlap, is checked below.
    per_tile["image"] = [Path(image).name for image in per_tile.image]
    alone = scores_table(truth[truth.image.isin(names)], per_tile, thresholds=[0.5], images=names).iloc[0]
    assert alone.n_truth == in_mosaic.n_truth >= 10
    assert in_mosaic.completeness >= max(alone.completeness - 0.1, 0.5), (in_mosaic.to_dict(), alone.to_dict())
    # and the tiles' overlaps leave no box twice
    overlaps = box_iou(box_array(found), box_array(found))
    assert not (np.triu(overlaps, k=1) > 0.5).any()


@pytest.mark.slow
def test_radec_of_detections_agrees_with_truth_to_a_tenth_of_a_pixel(trained_model):
    from astropy.io import fits
    from astropy.wcs import WCS
    from astropy.wcs.utils import proj_plane_pixel_scales

    from napari_clumps.metrics import match_image

    path, folder, truth = trained_model
    checked = 0
    for fits_path in sorted(folder.glob("*.fits"))[:10]:
        found = detect(str(fits_path), path, score_threshold=0.5)
        rows = truth[truth.image == fits_path.name]
        if not len(found) or not len(rows):
            continue
        wcs = WCS(fits.getheader(fits_path)).celestial
        pixel_deg = proj_plane_pixel_scales(wcs).mean()
        match = match_image(rows[["x_min", "y_min", "x_max", "y_max"]], found[["x_min", "y_min", "x_max", "y_max"]])
        for d in np.flatnonzero(match.detection_matched):
            det = found.iloc[d]
            for t in range(len(rows)):
                tr = rows.iloc[t]
                pixel_distance = np.hypot(det.x_center - tr.x_center, det.y_center - tr.y_center)
                sky_distance = np.hypot((det.ra - tr.ra) * np.cos(np.radians(tr.dec)), det.dec - tr.dec) / pixel_deg
                assert abs(sky_distance - pixel_distance) < 0.1
                checked += 1
    assert checked >= 5


@pytest.mark.slow
def test_a_bad_file_is_reported_and_the_rest_detected(trained_model, bad_files):
    path, folder, _ = trained_model
    items = [str(folder / "sim_00000.fits"), str(bad_files["truncated_fits"]), str(folder / "sim_00001.jpg")]
    results = list(iter_detections(items, path))
    assert [bool(r.error) for r in results] == [False, True, False]
    assert str(bad_files["truncated_fits"]) in results[1].error
    with pytest.raises(ValueError, match="truncated.fits"):
        detect(items, path)


@pytest.mark.slow
def test_detect_takes_a_folder_and_names_images_relative_to_it(trained_model):
    """``detect("folder/")`` runs on every image in it, as the CLI does, and names them relative
    to the folder; the rows are those of the files run one by one."""
    from napari_clumps import detect as top_level_detect
    from napari_clumps.io import find_images

    path, folder, _ = trained_model
    files = find_images([folder])
    assert len(files) >= 48  # FITS + JPEG per galaxy, and nothing else
    outcomes = list(iter_detections([folder], path, score_threshold=0.3))
    assert [o.name for o in outcomes] == [name for _, name in files]
    assert all(not o.error for o in outcomes)
    table = top_level_detect(str(folder), path, score_threshold=0.3)
    one_by_one = detect([str(p) for p, _ in files], path, names=[n for _, n in files], score_threshold=0.3)
    assert len(table) == len(one_by_one) > 0
    assert table.image.tolist() == one_by_one.image.tolist()
    np.testing.assert_allclose(table.x_min, one_by_one.x_min)


def test_get_detector_from_an_architecture_gives_an_untrained_head_that_detect_refuses():
    from napari_clumps.model import get_detector

    detector = get_detector("zoobot-convnext_pico", "cpu", backbone_weights="none")
    assert not detector.trained and detector.config.backbone == "zoobot-convnext_pico"
    with pytest.raises(ModelError, match="untrained detection head"):
        detect(np.zeros((64, 64, 3), np.uint8), detector)
    with pytest.raises(ModelError, match="no-such-model: no such model file or packaged model"):
        get_detector("no-such-model", "cpu")
