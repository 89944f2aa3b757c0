"""`napari-clumps detect` and `evaluate` end to end on simulated galaxies."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from napari_clumps.cli import main
from napari_clumps.detections import COLUMNS, read_detections, read_images_list


@pytest.mark.slow
def test_detect_folder_with_a_bad_file_then_evaluate(trained_model, tmp_path, capsys):
    model, folder, truth = trained_model
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(folder.glob("sim_*"))[:24]:  # 12 galaxies, FITS + JPEG
        shutil.copy(path, images / path.name)
    (images / "broken.fits").write_bytes(b"SIMPLE  =  garbage" * 10)
    out = tmp_path / "found.csv"
    status = main(
        [
            "detect",
            str(images),
            "--model",
            str(model),
            "--out",
            str(out),
            "--score-threshold",
            "0.3",
            "--device",
            "auto",
        ]
    )
    captured = capsys.readouterr()
    assert status == 1  # one file failed
    assert f"error: {images / 'broken.fits'}: not a readable FITS file" in captured.err
    assert "device: cpu (auto)" in captured.err
    found = read_detections(out)
    assert list(found.columns[:12]) == COLUMNS
    listed = read_images_list(out)
    assert len(listed) == 25 and (listed.status == "failed").sum() == 1
    assert listed.set_index("image").loc["broken.fits", "error"].startswith(str(images / "broken.fits"))
    ok = listed[listed.status == "ok"]
    assert (ok.n_detections == found.groupby("image").size().reindex(ok.image).fillna(0).to_numpy()).all()
    # RA/Dec present for FITS, empty for JPEG
    assert found[found.image.str.endswith(".fits")][["ra", "dec"]].notna().all().all()
    assert found[found.image.str.endswith(".jpg")][["ra", "dec"]].isna().all().all()
    # boxes inside the images, centres are box middles
    assert ((found.x_min >= 0) & (found.x_max <= 200) & (found.y_min >= 0) & (found.y_max <= 200)).all()
    np.testing.assert_allclose(found.x_center, (found.x_min + found.x_max) / 2, atol=1e-3)

    subset_truth = tmp_path / "truth.csv"
    truth[truth.image.isin(ok.image)].to_csv(subset_truth, index=False)
    pd.DataFrame({"image": ok.image}).to_csv(tmp_path / "truth.images.csv", index=False)
    assert main(["evaluate", "--truth", str(subset_truth), "--detections", str(out), "--score-threshold", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "at score >= 0.5: completeness" in printed
    metrics = json.loads((tmp_path / "found.metrics.json").read_text())["at_threshold"]
    assert metrics["completeness"] >= 0.6 and metrics["purity"] >= 0.5, metrics


def test_unknown_model_is_one_line(tmp_path, capsys, image_files):
    assert main(["detect", str(image_files["jpeg"]), "--model", str(tmp_path / "nope.safetensors")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'nope.safetensors'}: no such model file or packaged model"]
