"""Clumps injected into host galaxies: truth on the clumps, on the host, bluer, counted, seeded;
the PSF measured from the image. Hosts are made here (the simulator's discs, synthetic stars)."""

import io
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from napari_clumps.composite import lupton_composite
from napari_clumps.inject import (
    BOX_SIDE_PER_FWHM,
    InjectionSettings,
    estimate_psf_fwhm,
    host_mask_from_light,
    inject_clumps,
    linearise_rgb,
    measure_clump,
    restretch_rgb,
)
from napari_clumps.simulate import BANDS, SimulationSettings, simulate_galaxy

SIZE = 160


def _moffat(xx, yy, x0, y0, flux, fwhm, beta=3.5):
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    return flux * (beta - 1) / (np.pi * alpha**2) * (1 + ((xx - x0) ** 2 + (yy - y0) ** 2) / alpha**2) ** (-beta)


def _jpeg(rgb, quality=90):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def red_disc(seed=0, size=SIZE, n_stars=0, fwhm=4.0, noise=0.004):
    """A smooth red exponential disc (an elliptical-like host) with optional Moffat stars, as a
    Lupton composite (q = 3). Returns (rgb, bands)."""
    rng = np.random.default_rng(seed)
    centres = np.arange(size) + 0.5
    xx, yy = np.meshgrid(centres, centres)
    radius = np.hypot((xx - size / 2) / 1.0, (yy - size / 2) / 0.7)
    disc = np.exp(-radius / (size / 9))
    bands = np.array([0.55, 1.0, 1.3])[:, None, None] * disc[None]  # g, r, i: red
    for _ in range(n_stars):
        x, y = rng.uniform(8, size - 8, 2)
        flux = np.exp(rng.uniform(np.log(0.01), np.log(1.0))) * fwhm**2
        bands = bands + np.array([0.7, 1.0, 1.1])[:, None, None] * _moffat(xx, yy, x, y, flux, fwhm)[None]
    bands = bands + rng.normal(size=bands.shape) * noise
    return lupton_composite(bands.astype(np.float32), BANDS), bands


@pytest.fixture(scope="module")
def host():
    rgb, _ = red_disc()
    return rgb, host_mask_from_light(rgb)


def _luminance_excess(new, old):
    return linearise_rgb(new).mean(axis=-1) - linearise_rgb(old).mean(axis=-1)


def test_linearise_round_trip_is_exact():
    rgb = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    assert np.array_equal(restretch_rgb(linearise_rgb(rgb)), rgb)


def test_host_mask_is_the_central_galaxy(host):
    rgb, mask = host
    assert mask[SIZE // 2, SIZE // 2]
    assert 0.05 < mask.mean() < 0.8
    assert not mask[:5, :5].any() and not mask[-5:, -5:].any()
    # One piece, elongated along x as the disc is (axis ratio 0.7).
    assert ndimage.label(mask)[1] == 1
    rows, cols = np.nonzero(mask)
    assert np.ptp(cols) > np.ptp(rows)


def test_boxes_sit_on_the_injected_clumps(host):
    rgb, mask = host
    fwhm = 4.0
    for seed in range(5):
        new, boxes, labels = inject_clumps(rgb, mask, np.random.default_rng(seed), psf_fwhm=fwhm)
        assert len(boxes) >= 1 and np.all(labels == 1)
        # Light added (linearised luminance), lightly smoothed against the uint8 rounding.
        excess = ndimage.gaussian_filter(_luminance_excess(new, rgb), 1.0)
        side = BOX_SIDE_PER_FWHM * fwhm
        for x0, y0, x1, y1 in boxes:
            assert x1 - x0 == pytest.approx(side) and y1 - y0 == pytest.approx(side)  # not clipped here
            xc, yc = (x0 + x1) / 2, (y0 + y1) / 2
            window = excess[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))]
            r, c = np.unravel_index(np.argmax(window), window.shape)
            peak_x, peak_y = int(x0) + c + 0.5, int(y0) + r + 0.5
            assert np.hypot(peak_x - xc, peak_y - yc) <= 1.0, (seed, (xc, yc), (peak_x, peak_y))
            assert window.max() > 0
        # Every clearly brightened pixel lies within 1.5 box sides of some box centre.
        rows, cols = np.nonzero(excess > 0.2 * excess.max())
        centres = np.column_stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2])
        distance = np.hypot(cols[:, None] + 0.5 - centres[None, :, 0], rows[:, None] + 0.5 - centres[None, :, 1])
        assert distance.min(axis=1).max() < 1.5 * side


def test_clumps_only_inside_the_host_mask(host):
    rgb, mask = host
    half = mask.copy()
    half[:, : SIZE // 2] = False  # only the right half of the galaxy may take clumps
    fwhm = 3.0
    for seed in range(6):
        new, boxes, _ = inject_clumps(rgb, half, np.random.default_rng(seed), psf_fwhm=fwhm)
        centres = np.column_stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2])
        for x, y in centres:
            assert half[int(y), int(x)], (seed, x, y)
        # Nothing changes far from the clumps: bytes are identical beyond 3 clump FWHM (<= 1.8 PSF).
        changed_rows, changed_cols = np.nonzero(np.any(new != rgb, axis=-1))
        assert (changed_cols + 0.5 >= SIZE // 2 - 3 * 1.8 * fwhm).all()


def test_clumps_are_bluer_than_the_host_around_them(host):
    rgb, mask = host
    fwhm = 4.0
    n = 0
    for seed in range(5):
        new, boxes, _ = inject_clumps(rgb, mask, np.random.default_rng(seed), psf_fwhm=fwhm)
        before, after = linearise_rgb(rgb), linearise_rgb(new)
        for x0, y0, x1, y1 in boxes:
            x, y = (x0 + x1) / 2, (y0 + y1) / 2
            host_light = measure_clump(before, x, y, fwhm).host
            added = after[int(y), int(x)] - before[int(y), int(x)]
            assert added[2] / added[0] > host_light[2] / host_light[0]  # B/R of the clump > host's
            # ... and so in the display too: the blue channel rises more than the red one.
            shown = new[int(y), int(x)].astype(int) - rgb[int(y), int(x)].astype(int)
            assert shown[2] > shown[0]
            n += 1
    assert n >= 5


def test_contrast_follows_the_settings(host):
    """Closure: the injected clumps measure the contrast they were given (noiseless host)."""
    rgb, mask = host
    fwhm = 4.0
    settings = InjectionSettings(
        contrast_median=0.5,
        contrast_log_sigma=0.0,
        contrast_range=(0.5, 0.5),
        min_snr_range=(0.0, 0.0),
        size_range=(1.0, 1.0),
        count_weights=(1,),
    )
    contrasts = []
    for seed in range(8):
        new, boxes, _ = inject_clumps(rgb, mask, np.random.default_rng(seed), settings, psf_fwhm=fwhm)
        ((x0, y0, x1, y1),) = boxes
        x, y = (x0 + x1) / 2, (y0 + y1) / 2
        # The host's own curvature shows as a small "excess" too: measure what the clump added.
        contrasts.append(
            measure_clump(linearise_rgb(new), x, y, fwhm).contrast
            - measure_clump(linearise_rgb(rgb), x, y, fwhm).contrast
        )
    assert np.median(contrasts) == pytest.approx(0.5, rel=0.15)


def test_count_and_determinism_from_the_seed(host):
    rgb, mask = host
    first = inject_clumps(rgb, mask, np.random.default_rng(42), psf_fwhm=3.0)
    again = inject_clumps(rgb, mask, np.random.default_rng(42), psf_fwhm=3.0)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    other = inject_clumps(rgb, mask, np.random.default_rng(43), psf_fwhm=3.0)
    assert not np.array_equal(first[1], other[1])
    counts = [len(inject_clumps(rgb, mask, np.random.default_rng(seed), psf_fwhm=2.0)[1]) for seed in range(60)]
    assert min(counts) >= 1 and max(counts) <= 9
    # Clump Scout: median 2, mean 2.3 clumps per clumpy galaxy (a roomy host takes them all).
    assert np.median(counts) == 2
    assert 1.8 <= np.mean(counts) <= 2.9


def test_clumps_keep_apart(host):
    rgb, mask = host
    settings = InjectionSettings(count_weights=(0,) * 8 + (1,))  # always 9 wanted
    fwhm = 3.0
    for seed in range(3):
        _, boxes, _ = inject_clumps(rgb, mask, np.random.default_rng(seed), settings, psf_fwhm=fwhm)
        centres = np.column_stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2])
        distance = np.hypot(*(centres[:, None, :] - centres[None, :, :]).transpose(2, 0, 1))
        distance[np.diag_indices(len(centres))] = np.inf
        assert len(centres) >= 4
        assert distance.min() >= settings.min_separation_fwhm * fwhm - 1e-9


def test_nothing_to_inject_returns_no_boxes(host):
    rgb, mask = host
    new, boxes, labels = inject_clumps(rgb, np.zeros_like(mask), np.random.default_rng(0), psf_fwhm=3.0)
    assert boxes.shape == (0, 4) and labels.shape == (0,)
    assert np.array_equal(new, rgb)
    # A blank, starless image: no PSF can be measured, so nothing is injected (no error).
    blank = np.full((64, 64, 3), 20, np.uint8)
    new, boxes, _ = inject_clumps(blank, np.ones((64, 64), bool), np.random.default_rng(0))
    assert len(boxes) == 0 and np.array_equal(new, blank)
    with pytest.raises(ValueError, match="host mask"):
        inject_clumps(rgb, np.ones((3, 3), bool), np.random.default_rng(0), psf_fwhm=3.0)


@pytest.mark.parametrize("fwhm", [3.0, 6.0])
def test_psf_estimate_on_a_simulated_image_with_stars(fwhm):
    rgb, _ = red_disc(seed=3, size=200, n_stars=14, fwhm=fwhm)
    estimate = estimate_psf_fwhm(_jpeg(rgb))
    assert estimate is not None
    assert estimate == pytest.approx(fwhm, rel=0.25)


def test_psf_estimate_on_the_simulator():
    """The simulator's own galaxies (Moffat PSF, q = 3 composite, JPEG) with up to 10 stars: where
    the estimator answers (it may say None: too few unsaturated point sources), it is right."""
    settings = SimulationSettings(max_stars=10)
    ratios = []
    for index in range(8):
        galaxy = simulate_galaxy(21, index, settings)
        estimate = estimate_psf_fwhm(_jpeg(lupton_composite(galaxy.bands, BANDS)[::-1]))
        if estimate is not None:
            ratios.append(estimate / galaxy.psf_fwhm_px)
    assert len(ratios) >= 3
    assert np.all(np.abs(np.array(ratios) - 1) < 0.25), ratios


def test_psf_unknown_without_point_sources():
    rgb, _ = red_disc(seed=4, n_stars=0)
    assert estimate_psf_fwhm(rgb) is None


def test_core_module_imports_no_gui():
    code = (
        "import sys, napari_clumps.inject; "
        "bad = [m for m in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'napari_clumps.cli', 'torch') if m in sys.modules]; "
        "sys.exit(str(bad) if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
