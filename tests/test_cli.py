"""The command line: simulate, info, errors as one line with a non-zero exit status."""

import subprocess
import sys

import pandas as pd
import pytest

from napari_clumps.cli import main
from napari_clumps.detections import images_list_path, read_detections


def test_simulate_writes_fits_jpeg_and_truth(tmp_path, capsys):
    assert main(["simulate", str(tmp_path), "--n", "3", "--seed", "4"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "sim_00000.fits",
        "sim_00000.jpg",
        "sim_00001.fits",
        "sim_00001.jpg",
        "sim_00002.fits",
        "sim_00002.jpg",
        "simulation.json",
        "truth.csv",
        "truth.images.csv",
    ]
    truth = read_detections(tmp_path / "truth.csv")
    assert (truth.score == 1).all() and set(truth.model) == {"simulation-truth"}
    assert len(pd.read_csv(images_list_path(tmp_path / "truth.csv"))) == 6
    # same seed, same files
    again = tmp_path / "again"
    main(["simulate", str(again), "--n", "3", "--seed", "4"])
    assert (again / "sim_00001.fits").read_bytes() == (tmp_path / "sim_00001.fits").read_bytes()


def test_info_prints_what_was_read_and_reports_bad_files(image_files, bad_files, capsys):
    status = main(["info", str(image_files["cube"]), str(bad_files["one_d"]), str(image_files["jpeg"])])
    out, err = capsys.readouterr()
    assert status == 1
    assert "cube.fits: 80x60 px, bands g,r,i, centre RA" in out
    assert "colour.jpg: 80x60 px, bands R,G,B, no celestial WCS" in out
    assert err.strip() == f"error: {bad_files['one_d']}: 1-D data of shape (100,); need a 2-D image or a 3-D band cube"


def test_module_entry_point_has_no_traceback_without_debug(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "napari_clumps", "info", str(tmp_path / "nope.fits")], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope.fits'}: no such file"]


@pytest.mark.slow
def test_demo_runs_offline_with_the_packaged_model(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--n", "2"]) == 0
    out = capsys.readouterr().out
    assert f"detections: {tmp_path / 'detections.csv'}" in out
    for name in ("sim_00000.fits", "sim_00001.jpg", "hubble_xdf_crop.png"):
        png = tmp_path / "png" / f"{name}.png"
        assert f"-> {png}" in out and png.stat().st_size > 10_000
    table = read_detections(tmp_path / "detections.csv")
    assert table.model.str.startswith("default").all()
    assert "completeness" in out
