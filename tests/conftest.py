"""Shared fixtures: image files of every supported kind, made here (no network, no shared data)."""

import collections
import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

# torchvision imports torch._dynamo, which imports triton (bundling LLVM) on Linux CUDA builds.
# Loaded after Mesa's llvmpipe serves a napari OpenGL context, it crashes the process; loaded
# first, both work. The widgets guard against the other order themselves (see
# napari_clumps._detect_widget.avoid_triton_llvm_clash and its test).
import torchvision.ops  # noqa: F401
from hypothesis import HealthCheck, settings

#: Fixtures that oblige a test to carry a marker (pyproject.toml registers them): the model
#: trained here takes minutes, and a viewer or qtbot needs Qt and an OpenGL context.
FIXTURE_MARKERS = {"trained_model": "slow", "make_napari_viewer": "gui", "qtbot": "gui"}


def pytest_collection_modifyitems(config, items):
    """Refuse to run a test that uses such a fixture without its marker, so that
    ``-m "not slow"`` (make test-fast) and ``-m "not gui"`` stay what they say."""
    missing = [
        f"{item.nodeid}: uses {fixture}, needs @pytest.mark.{marker}"
        for item in items
        for fixture, marker in FIXTURE_MARKERS.items()
        if fixture in getattr(item, "fixturenames", ()) and item.get_closest_marker(marker) is None
    ]
    if missing:
        raise pytest.UsageError("tests missing a marker:\n" + "\n".join(missing))


# ----------------------------------------------------------------------------- hypothesis

# Profiles of the property-based tests (tests/test_fuzz_readers.py). "ci", the default, is
# sized for the whole fuzz file to take a minute or two on two shared cores, and is
# derandomised (the same cases every run, no example database) so that CI is reproducible;
# "long" (HYPOTHESIS_PROFILE=long, benchmarks/fuzz_readers.py) runs 10 times as many cases,
# freshly random each run. No deadline: a case's time depends on the machine's load, and a
# hang shows as the run's time (recorded by the benchmark), not as a flaky failure.
_PROFILE_COMMON = dict(
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("ci", max_examples=100, derandomize=True, **_PROFILE_COMMON)
settings.register_profile("long", max_examples=1000, derandomize=False, **_PROFILE_COMMON)
HYPOTHESIS_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(HYPOTHESIS_PROFILE)

#: Cases the fuzz tests ran, ``(family, outcome) -> count``; outcome is "image" or the error's
#: reason with numbers and parenthesised details dropped. Printed at the end of the run, and
#: written as JSON to ``$FUZZ_COUNTS_JSON`` when set (benchmarks/fuzz_readers.py).
FUZZ_COUNTS: collections.Counter = collections.Counter()
#: The slowest case of each family, seconds (measured, never asserted).
FUZZ_SLOWEST: dict = {}


def pytest_terminal_summary(terminalreporter):
    if not FUZZ_COUNTS:
        return
    families = sorted({family for family, _ in FUZZ_COUNTS})
    terminalreporter.section(f"fuzz cases (hypothesis profile {HYPOTHESIS_PROFILE})")
    for family in families:
        total = sum(n for (f, _), n in FUZZ_COUNTS.items() if f == family)
        terminalreporter.write_line(f"{family}: {total} cases, slowest {FUZZ_SLOWEST.get(family, 0):.2f} s")
        for (f, outcome), n in sorted(FUZZ_COUNTS.items(), key=lambda item: -item[1]):
            if f == family:
                terminalreporter.write_line(f"    {n:6d}  {outcome}")
    out = os.environ.get("FUZZ_COUNTS_JSON")
    if out:
        rows = [{"family": f, "outcome": o, "cases": n} for (f, o), n in sorted(FUZZ_COUNTS.items())]
        Path(out).write_text(
            json.dumps({"profile": HYPOTHESIS_PROFILE, "counts": rows, "slowest_s": FUZZ_SLOWEST}, indent=1)
        )


@pytest.fixture(autouse=True)
def settings_dir(tmp_path_factory, monkeypatch):
    """Every test gets its own empty napari-clumps settings directory: the user's real settings
    are never read or written, and no test sees another's remembered choices."""
    from napari_clumps.settings import CONFIG_DIR_VARIABLE

    directory = tmp_path_factory.mktemp("settings")
    monkeypatch.setenv(CONFIG_DIR_VARIABLE, str(directory))
    return directory


SIZE = (60, 80)  # rows, columns: not square, so that axis mix-ups show
CRVAL = (150.1, 2.2)  # RA, Dec in degrees of FITS pixel CRPIX
CRPIX = (31.0, 21.0)  # 1-based FITS pixel (x, y): astropy pixel (30, 20), edge (30.5, 20.5)
PIXEL_SCALE_DEG = 0.4 / 3600


def make_wcs_header():
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = CRVAL
    wcs.wcs.crpix = CRPIX
    wcs.wcs.cd = [[-PIXEL_SCALE_DEG, 0], [0, PIXEL_SCALE_DEG]]
    return wcs.to_header()


def band_planes(n=3):
    """Bands whose pixel (row r, col c) value encodes r, c and the band, so orientation is checkable."""
    rows, cols = np.mgrid[: SIZE[0], : SIZE[1]]
    return np.stack([(rows * 1000 + cols + 0.1 * b).astype(np.float32) for b in range(n)])


@pytest.fixture(scope="session")
def image_files(tmp_path_factory) -> dict:
    """name -> path of valid files of every supported kind."""
    from astropy.io import fits
    from PIL import Image

    d = tmp_path_factory.mktemp("images")
    planes = band_planes()
    header = make_wcs_header()
    files = {}

    files["single"] = d / "single.fits"
    fits.PrimaryHDU(planes[1], header=header).writeto(files["single"])

    cube_header = header.copy()
    cube_header["BANDS"] = "g,r,i"
    files["cube"] = d / "cube.fits"
    fits.PrimaryHDU(planes, header=cube_header).writeto(files["cube"])

    files["cube_gz"] = d / "cube.fits.gz"
    fits.PrimaryHDU(planes, header=cube_header).writeto(files["cube_gz"])

    extensions = [fits.PrimaryHDU()]
    for band, name in zip(planes, "gri"):
        ext_header = header.copy()
        ext_header["FILTER"] = name
        extensions.append(fits.ImageHDU(band, header=ext_header, name=f"IMG_{name.upper()}"))
    files["mef"] = d / "mef.fits"
    fits.HDUList(extensions).writeto(files["mef"])

    files["compressed"] = d / "tile.fits.fz"
    fits.HDUList(
        [fits.PrimaryHDU(), fits.CompImageHDU(planes[1], header=header, compression_type="GZIP_1", quantize_level=0.0)]
    ).writeto(files["compressed"])

    files["degenerate_4d"] = d / "radio.fits"
    fits.PrimaryHDU(planes[None], header=header).writeto(files["degenerate_4d"])

    with_nan = planes.copy()
    with_nan[0, 5, 7] = np.nan
    with_nan[2, 10:12, 3] = np.inf
    files["nan"] = d / "nan.fits"
    fits.PrimaryHDU(with_nan, header=cube_header).writeto(files["nan"])

    rgb = np.zeros(SIZE + (3,), np.uint8)
    rgb[..., 0] = np.arange(SIZE[0])[:, None] * 4  # red grows down the rows
    rgb[..., 1] = np.arange(SIZE[1])[None, :] * 3  # green grows along the columns
    rgb[..., 2] = 200
    files["jpeg"] = d / "colour.jpg"
    Image.fromarray(rgb).save(files["jpeg"], quality=98)
    files["png"] = d / "colour.png"
    Image.fromarray(rgb).save(files["png"])
    files["png_rgba"] = d / "alpha.png"
    Image.fromarray(np.dstack([rgb, np.full(SIZE, 7, np.uint8)])).save(files["png_rgba"])
    files["png_grey"] = d / "grey.png"
    Image.fromarray(rgb[..., 0]).save(files["png_grey"])
    return files


@pytest.fixture(scope="session")
def bad_files(tmp_path_factory, image_files) -> dict:
    """name -> path of files that must be refused with a one-line error."""
    from astropy.io import fits

    d = tmp_path_factory.mktemp("bad")
    files = {}
    files["corrupt_fits"] = d / "corrupt.fits"
    files["corrupt_fits"].write_bytes(b"this is not a FITS file at all" * 200)
    files["corrupt_jpeg"] = d / "corrupt.jpg"
    files["corrupt_jpeg"].write_bytes(b"\xff\xd8\xff garbage" * 50)
    files["empty_fits"] = d / "empty.fits"
    files["empty_fits"].write_bytes(b"")
    files["empty_png"] = d / "empty.png"
    files["empty_png"].write_bytes(b"")
    files["no_data_fits"] = d / "nodata.fits"
    fits.HDUList([fits.PrimaryHDU()]).writeto(files["no_data_fits"])
    files["one_d"] = d / "spectrum.fits"
    fits.PrimaryHDU(np.arange(100, dtype=np.float32)).writeto(files["one_d"])
    files["four_d"] = d / "hypercube.fits"
    fits.PrimaryHDU(np.zeros((2, 3, 8, 8), np.float32)).writeto(files["four_d"])
    files["all_nan"] = d / "allnan.fits"
    fits.PrimaryHDU(np.full((20, 20), np.nan, np.float32)).writeto(files["all_nan"])
    raw = Path(image_files["cube"]).read_bytes()
    files["truncated_fits"] = d / "truncated.fits"
    files["truncated_fits"].write_bytes(raw[: len(raw) // 2])
    raw = Path(image_files["jpeg"]).read_bytes()
    files["truncated_jpeg"] = d / "truncated.jpg"
    files["truncated_jpeg"].write_bytes(raw[: len(raw) // 2])
    # found by fuzzing: astropy reads a gzipped SIMPLE = F file's one opaque HDU for ever
    nonstandard = fits.Header([("SIMPLE", False), ("BITPIX", 8), ("NAXIS", 0)]).tostring().encode()
    files["nonstandard_gzipped_fits"] = d / "nonstandard.fits.gz"
    files["nonstandard_gzipped_fits"].write_bytes(gzip.compress(nonstandard + bytes(2880)))
    return files


@pytest.fixture(scope="session")
def simulated(tmp_path_factory):
    """A small simulated data set: (folder, truth table)."""
    from napari_clumps.detections import read_detections
    from napari_clumps.simulate import write_dataset

    d = tmp_path_factory.mktemp("sim")
    return d, read_detections(write_dataset(d, n=8, seed=11))


@pytest.fixture(scope="session")
def trained_model(request, tmp_path_factory):
    """A small detector trained here from scratch on simulated galaxies (~3 min on 2 CPU cores).

    Returns (model file, held-out folder, held-out truth table). Training: 96 galaxies of seed
    21 (FITS), resnet10t backbone, 6 epochs, lr 1e-3; held out: 24 galaxies of seed 22.
    Kept in pytest's cache folder, keyed by the source of the code that makes it, so that a
    re-run on an unchanged tree does not train again (a clean clone always trains).
    """
    import hashlib

    import torch

    import napari_clumps
    from napari_clumps.detections import read_detections
    from napari_clumps.model import new_detector, save_model
    from napari_clumps.simulate import write_dataset
    from napari_clumps.training import TrainingOptions, load_labelled_images, train

    package = Path(napari_clumps.__file__).parent
    key = hashlib.sha256(
        b"".join(
            (package / f).read_bytes()
            for f in ("model.py", "networks.py", "training.py", "simulate.py", "inference.py", "composite.py")
        )
    ).hexdigest()[:16]
    d = Path(request.config.cache.mkdir(f"trained_model_{key}"))
    path, test_truth = d / "model.safetensors", d / "test" / "truth.csv"
    if not (path.exists() and test_truth.exists()):
        train_truth = write_dataset(d / "train", n=96, seed=21)
        write_dataset(d / "test", n=24, seed=22)
        items, _ = load_labelled_images(sorted((d / "train").glob("*.fits")), train_truth, strict_names=False)
        torch.manual_seed(0)
        detector = train(
            new_detector("resnet10t", backbone_weights=None),
            items,
            TrainingOptions(epochs=6, learning_rate=1e-3, trainable_blocks=None, val_fraction=0, seed=0),
            data_description="96 simulated galaxies, seed 21",
        )
        save_model(detector, path)
    return path, d / "test", read_detections(test_truth)


@pytest.fixture(scope="session")
def galaxy_with_pasted_clump():
    """A simulated galaxy's composite on a larger empty canvas, with a copy of one of its clumps
    pasted into the top-left corner, off the galaxy. Returns (RGB uint8, corner extent in px):
    a box centred within the extent in x and y is the pasted copy."""
    from napari_clumps.composite import lupton_composite
    from napari_clumps.simulate import BANDS, simulate_galaxy

    galaxy = simulate_galaxy(seed=7, index=3)
    rgb = lupton_composite(galaxy.bands, BANDS)
    x, y = int(galaxy.clumps[0].x), int(galaxy.clumps[0].y)
    half = int(galaxy.box_side) // 2
    patch = rgb[y - half : y + half, x - half : x + half]
    canvas = np.zeros((320, 320, 3), np.uint8)
    canvas[60:260, 60:260] = rgb
    canvas[4 : 4 + patch.shape[0], 4 : 4 + patch.shape[1]] = patch
    return canvas, 4 + 2 * half


# ----------------------------------------------------------------------------- SAMP


def _samp_to_this_folder(monkeypatch, folder: Path) -> Path:
    """Point SAMP's hub lookup at a lockfile in ``folder`` (``$SAMP_HUB``) and the home folder
    there too, so that a test never sees, or disturbs, a hub the user is running."""
    lockfile = folder / "samp-hub-lockfile"
    monkeypatch.setenv("SAMP_HUB", "std-lockurl:" + lockfile.as_uri())
    monkeypatch.setenv("HOME", str(folder))
    return lockfile


@pytest.fixture
def no_samp_hub(tmp_path, monkeypatch):
    """No SAMP hub running (as far as napari-clumps can see)."""
    _samp_to_this_folder(monkeypatch, tmp_path)


@pytest.fixture
def samp_hub(tmp_path, monkeypatch):
    """A SAMP hub of our own, on localhost only (no web profile), stopped after the test."""
    from napari_clumps.samp import _astropy_samp

    hub = _astropy_samp().SAMPHubServer(
        web_profile=False, lockfile=str(_samp_to_this_folder(monkeypatch, tmp_path)), pool_size=1
    )
    hub.start(wait=False)
    yield hub
    hub.stop()


class FakeSampTool:
    """A stand-in for TOPCAT or DS9 on a test hub: subscribed to ``mtypes``, it keeps every
    ``(mtype, params)`` it receives, in order, and answers calls with success."""

    def __init__(self, hub, name: str, mtypes):
        from napari_clumps.samp import _astropy_samp

        self.received: list[tuple[str, dict]] = []
        self.client = _astropy_samp().SAMPIntegratedClient(name=name)
        self.client.connect(hub=hub, pool_size=1)
        for mtype in mtypes:
            self.client.bind_receive_notification(mtype, self._notified)
            self.client.bind_receive_call(mtype, self._called)

    def _notified(self, private_key, sender_id, mtype, params, extra):
        self.received.append((mtype, params))

    def _called(self, private_key, sender_id, msg_id, mtype, params, extra):
        self.received.append((mtype, params))
        self.client.reply(msg_id, {"samp.status": "samp.ok", "samp.result": {}})

    def wait_for(self, n: int, timeout: float = 10.0) -> list[tuple[str, dict]]:
        """The first ``n`` messages, once they have come (notifications arrive asynchronously)."""
        import time

        end = time.monotonic() + timeout
        while len(self.received) < n and time.monotonic() < end:
            time.sleep(0.02)
        assert len(self.received) >= n, f"received {self.received}, expected {n} messages"
        return self.received[:n]

    def close(self):
        self.client.disconnect()


@pytest.fixture
def samp_tools(samp_hub):
    """Make fake SAMP tools on the test hub: ``samp_tools(name, mtypes)``; closed after the test."""
    tools = []

    def make(name, mtypes):
        tools.append(FakeSampTool(samp_hub, name, mtypes))
        return tools[-1]

    yield make
    for tool in tools:
        tool.close()


@pytest.fixture
def model_in_this_process(monkeypatch):
    """Detect and Fine-tune run the model in this process (a worker thread), where a stand-in for
    a core function (``inference.iter_detections``, ``training.fine_tune``) is seen; by default
    they run it in a process of its own (napari_clumps.model_process), where one set here is not."""
    from napari_clumps import _background

    monkeypatch.setattr(_background, "MODEL_IN_A_PROCESS", False)
