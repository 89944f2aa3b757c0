"""The packaged default model: small, loads fast from the package, used when no model is named."""

from napari_clumps.cli import main
from napari_clumps.detections import read_detections
from napari_clumps.model import DEFAULT_MODEL, get_detector, packaged_model_path


def test_packaged_default_model_is_small_and_documented():
    path = packaged_model_path(DEFAULT_MODEL)
    assert path.is_file() and path.stat().st_size <= 25 * 1024 * 1024
    detector = get_detector(None, "cpu")
    assert detector.config.backbone == "zoobot-convnext_pico"
    provenance = detector.provenance
    assert provenance["model_id"].startswith("default")
    assert "simulate" in provenance["data"] and provenance["epochs_run"] >= 1
    assert "command" in provenance
    assert detector.score_threshold == provenance["score_threshold"]
    assert 0.05 <= detector.score_threshold <= 0.95


def test_detect_uses_the_default_model_when_none_is_named(tmp_path, simulated, capsys):
    folder, _ = simulated
    out = tmp_path / "d.csv"
    assert main(["detect", str(folder / "sim_00000.fits"), str(folder / "sim_00001.jpg"), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "default_clump_detector.safetensors" in err and "(the model's)" in err
    table = read_detections(out)
    assert len(table) == 0 or table.model.str.startswith("default").all()
