"""Pixel scale: the PSF from options or headers, resampling to the model's PSF, boxes mapped back."""

import numpy as np
import pytest
from astropy.io import fits
from conftest import PIXEL_SCALE_DEG, make_wcs_header

from napari_clumps.scale import (
    DEFAULT_SEEING_ARCSEC,
    FACTOR_RANGE,
    ScaleError,
    header_psf_fwhm,
    image_psf_fwhm,
    resample_factor,
)


def test_psf_from_header_keywords():
    from astropy.wcs import WCS

    header = make_wcs_header()
    wcs = WCS(header)
    assert header_psf_fwhm(header, wcs) is None
    header["SEEING"] = 1.6  # arcsec, over 0.4"/px
    assert header_psf_fwhm(header, wcs) == pytest.approx(1.6 / (PIXEL_SCALE_DEG * 3600))
    assert header_psf_fwhm(header, None) is None  # a seeing needs a pixel scale
    header["PSFFWHM"] = 5.5  # pixels: preferred
    assert header_psf_fwhm(header, wcs) == 5.5


def test_options_come_before_the_header():
    class Image:
        header = fits.Header({"PSFFWHM": 5.5})
        wcs = None

    assert image_psf_fwhm(Image()) == 5.5
    assert image_psf_fwhm(Image(), psf_fwhm=3.0) == 3.0
    assert image_psf_fwhm(Image(), pixel_scale=0.4) == pytest.approx(DEFAULT_SEEING_ARCSEC / 0.4)
    assert image_psf_fwhm(Image(), pixel_scale=0.4, seeing=2.0) == pytest.approx(5.0)
    assert image_psf_fwhm(None) is None
    for bad in ({"psf_fwhm": 0}, {"psf_fwhm": -2}, {"pixel_scale": float("nan")}, {"pixel_scale": 1, "seeing": -1}):
        with pytest.raises(ScaleError):
            image_psf_fwhm(None, **bad)


def test_resample_factor():
    assert resample_factor(6.0, 3.0) == 2.0
    assert resample_factor(6.0, None) == 1.0 and resample_factor(0.0, 3.0) == 1.0
    assert resample_factor(6.0, 6.1) == 1.0  # too close to bother
    assert resample_factor(6.0, 100.0) == FACTOR_RANGE[0] and resample_factor(6.0, 0.1) == FACTOR_RANGE[1]


@pytest.mark.slow
def test_enlarged_image_with_its_psf_given_finds_the_clumps_where_they_are(trained_model):
    """A 2x enlarged image with ``psf_fwhm`` given is shrunk back for the network: the boxes come
    back in the enlarged image's pixels, on its (enlarged) truth, as well as at native size."""
    from skimage.transform import rescale

    from napari_clumps.inference import detect
    from napari_clumps.io import read_image
    from napari_clumps.metrics import scores_table
    from napari_clumps.model import get_detector

    model, folder, truth = trained_model
    detector = get_detector(str(model), "cpu")
    names = sorted(p.name for p in folder.glob("*.fits"))[:10]
    images = [read_image(folder / n) for n in names]
    fwhm = {n: float(im.header["PSFFWHM"]) for n, im in zip(names, images)}
    original = detector.config.psf_fwhm_px
    truth = truth[truth.image.isin(names)]
    big_truth = truth.copy()
    for column in ("x_min", "y_min", "x_max", "y_max", "x_center", "y_center"):
        big_truth[column] = truth[column] * 2
    try:
        found, found_big = [], []
        for name, image in zip(names, images):
            detector.config.psf_fwhm_px = fwhm[name]  # native images need no resampling
            found.append(detect(image.composite, detector, names=[name], score_threshold=0.3))
            big = np.clip(np.rint(rescale(image.composite / 255.0, 2, channel_axis=-1) * 255), 0, 255)
            found_big.append(
                detect(big.astype(np.uint8), detector, names=[name], score_threshold=0.3, psf_fwhm=2 * fwhm[name])
            )
    finally:
        detector.config.psf_fwhm_px = original
    import pandas as pd

    native = scores_table(truth, pd.concat(found), thresholds=[0.3], images=names).iloc[0]
    resampled = scores_table(big_truth, pd.concat(found_big), thresholds=[0.3], images=names).iloc[0]
    assert native.f1 > 0.5
    assert resampled.f1 >= native.f1 - 0.1
    assert pd.concat(found_big)[["x_max", "y_max"]].to_numpy().max() > 200  # enlarged image's pixels


def test_cli_refuses_a_bad_psf_in_one_line(tmp_path, simulated, capsys):
    from napari_clumps.cli import main

    folder, _ = simulated
    with pytest.raises(SystemExit) as exit_:  # a bad option value is a usage error (status 2)
        main(["detect", str(folder), "--out", str(tmp_path / "x.csv"), "--psf-fwhm", "-3"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: argument --psf-fwhm: -3 is not above 0 (see napari-clumps detect --help)"]
    assert not (tmp_path / "x.csv").exists()


def test_cli_says_when_the_model_cannot_use_the_psf(tmp_path, simulated, capsys):
    """The packaged default records no training PSF: a given PSF is reported as unused."""
    from napari_clumps.cli import main
    from napari_clumps.model import get_detector

    assert get_detector(None, "cpu").config.psf_fwhm_px == 0
    folder, _ = simulated
    assert main(["detect", str(folder / "sim_00000.jpg"), "--out", str(tmp_path / "x.csv"), "--psf-fwhm", "5"]) == 0
    assert "records no training PSF size" in capsys.readouterr().err
