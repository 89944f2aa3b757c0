"""Long batch runs: detections streamed to disk as images finish, --resume, a clean stop on
SIGTERM, and a command line that checks its arguments before loading a model.

The detector here is a small random network (resnet10t, untrained, saved as a model file): the
rows it makes are nonsense, but they are many and deterministic, which is what these tests need.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import napari_clumps
from napari_clumps.cli import main
from napari_clumps.detections import (
    COLUMNS,
    HOST_COLUMNS,
    DetectionsFileError,
    DetectionsWriter,
    OutputPathError,
    detections_frame,
    images_list_path,
    images_row,
    read_detections,
    read_images_list,
    write_detections,
)

N_IMAGES = 24
SOURCE = str(Path(napari_clumps.__file__).resolve().parents[1])


def subprocess_env(**extra) -> dict:
    """This checkout's package first; one torch thread, as the in-process runs use."""
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join([SOURCE, *filter(None, [env.get("PYTHONPATH")])])
    return env


@pytest.fixture
def one_thread():
    """In-process runs on one torch thread, like the subprocesses (the same sums, bit for bit)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def random_model(tmp_path_factory) -> Path:
    """A small untrained detector saved as a model file (random weights, fixed seed)."""
    import torch

    from napari_clumps.model import new_detector, save_model

    torch.manual_seed(0)
    detector = new_detector("resnet10t", backbone_weights=None)
    detector.provenance = {"model_id": "random-resnet10t", "score_threshold": 0.3}
    return save_model(detector, tmp_path_factory.mktemp("model") / "random.safetensors")


@pytest.fixture(scope="module")
def small_images(tmp_path_factory) -> Path:
    """A folder of N_IMAGES 64 x 64 PNGs: noise and three bright blobs each."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("small")
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:64, :64]
    for i in range(N_IMAGES):
        image = rng.normal(20, 5, (64, 64, 3))
        for x, y in rng.uniform(10, 54, (3, 2)):
            image += 200 * np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / 8)[..., None]
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"g{i:03d}.png")
    return folder


def detect_args(images, model, out) -> list[str]:
    return ["detect", str(images), "--model", str(model), "--out", str(out), "--batch-size", "1", "--keep-off-host"]


# ---------------------------------------------------------------------------- the writer


def image_tables():
    """Tables of four images as the detector makes them: RA/Dec or not, a host or not, none."""
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.cdelt = [-1e-4, 1e-4]
    boxes = [[1.123456, 2.5, 11.0, 12.987654], [30, 30, 40, 41]]
    a = detections_frame("a.fits", boxes, ["clump", "odd_clump"], [0.912345678, 0.5], wcs=wcs, model="m")
    a["host_distance"], a["on_host"] = [0.25, 1.5], [True, False]
    b = detections_frame("dir/b, with comma.png", boxes[:1], [1], 0.7, model="m")
    b["host_distance"], b["on_host"] = np.nan, None  # no host found
    empty = detections_frame("c.jpg", np.empty((0, 4)), [], [], model="m")
    empty["host_distance"], empty["on_host"] = [], []
    return [
        (images_row("a.fits", 2, 80, 60), a),
        (images_row("dir/b, with comma.png", 1, 64, 64), b),
        (images_row("c.jpg", 0, 10, 20), empty),
        (images_row("d.fits", error="d.fits: not a readable FITS file (OSError: boom)"), None),
    ]


def write_streamed(path, items, **options) -> DetectionsWriter:
    with DetectionsWriter(path, **options) as writer:
        for row, table in items:
            writer.append(row, table)
    return writer


def test_streamed_files_are_those_written_at_once(tmp_path):
    items = image_tables()
    at_once = write_detections(
        pd.concat([t for _, t in items if t is not None], ignore_index=True),
        tmp_path / "once.csv",
        pd.DataFrame([row for row, _ in items]),
    )
    streamed = tmp_path / "streamed.csv"
    writer = write_streamed(streamed, items)
    assert (writer.n_images, writer.n_rows, writer.n_failed) == (4, 3, 1)
    assert streamed.read_bytes() == at_once.read_bytes()
    assert images_list_path(streamed).read_bytes() == images_list_path(at_once).read_bytes()
    pd.testing.assert_frame_equal(read_detections(streamed), read_detections(at_once))
    pd.testing.assert_frame_equal(read_images_list(streamed), read_images_list(at_once))


def test_streamed_numbers_are_written_as_pandas_writes_them(tmp_path):
    rng = np.random.default_rng(3)
    n = 400
    magnitudes = 10.0 ** rng.integers(-9, 18, (n, 1))
    boxes = np.abs(rng.normal(size=(n, 4))) * magnitudes
    boxes[:, 2:] += boxes[:, :2]
    table = detections_frame("x.fits", boxes, ["clump"] * n, rng.uniform(0, 1, n), model="m")
    table["ra"], table["dec"] = rng.uniform(0, 360, n), rng.normal(0, 1e-3, n) * magnitudes[:, 0]
    table.loc[::7, "dec"] = np.nan
    table["host_distance"] = rng.choice([np.nan, 0.0, 1e-5, 123456.789, 1 / 3], n)
    table["on_host"] = rng.choice([True, False, None], n)
    table.loc[::5, "label"] = "odd_clump"
    at_once = write_detections(table, tmp_path / "once.csv")
    write_streamed(tmp_path / "streamed.csv", [(images_row("x.fits", n, 9, 9), table)])
    assert (tmp_path / "streamed.csv").read_bytes() == at_once.read_bytes()


def test_files_are_valid_after_every_image(tmp_path):
    path = tmp_path / "d.csv"
    items = image_tables()
    with DetectionsWriter(path) as writer:
        assert list(read_detections(path).columns) == COLUMNS + HOST_COLUMNS and read_images_list(path).empty
        for n, (row, table) in enumerate(items, 1):
            writer.append(row, table)
            assert list(read_images_list(path).image) == [r["image"] for r, _ in items[:n]]
            assert len(read_detections(path)) == sum(len(t) for _, t in items[:n] if t is not None)


def test_a_new_run_replaces_old_files_and_resume_keeps_them(tmp_path):
    path = tmp_path / "d.csv"
    items = image_tables()
    write_streamed(path, items)
    writer = DetectionsWriter(path)  # not opened: nothing replaced yet
    assert len(read_images_list(path)) == 4
    with writer:
        assert read_images_list(path).empty
    resumed = DetectionsWriter(path, resume=True)
    assert resumed.done == {} and resumed.notes == []


def test_resume_removes_a_torn_line_and_an_unfinished_image(tmp_path):
    b, a, c = image_tables()[1], image_tables()[0], image_tables()[2]
    items = [b, a, c]  # a, with two rows, is cut off
    whole = tmp_path / "whole.csv"
    write_streamed(whole, items)
    path = tmp_path / "d.csv"
    write_streamed(path, items[:1])
    # killed while writing image 2: its rows are there, one torn; its images-list row is torn
    rows = whole.read_bytes()[len(path.read_bytes()) :]
    with open(path, "ab") as handle:
        handle.write(rows[:-5])
    with open(images_list_path(path), "ab") as handle:
        handle.write(b"a.fi")

    writer = DetectionsWriter(path, resume=True)
    assert writer.done == {"dir/b, with comma.png": "ok"} and writer.done_rows == 1 and writer.models == {"m"}
    assert len(writer.notes) == 2, writer.notes
    assert writer.notes[0].startswith(f"{path}: removed the rows of an unfinished image")
    assert writer.notes[1].startswith(f"{images_list_path(path)}: removed a torn last line (4 bytes)")
    with writer:
        for row, table in items[1:]:
            writer.append(row, table)
    assert path.read_bytes() == whole.read_bytes()
    assert images_list_path(path).read_bytes() == images_list_path(whole).read_bytes()


def test_resume_tries_failed_images_again(tmp_path):
    path = tmp_path / "d.csv"
    items = image_tables()
    write_streamed(path, items)
    writer = DetectionsWriter(path, resume=True)
    assert set(writer.done) == {"a.fits", "dir/b, with comma.png", "c.jpg"}
    assert writer.notes == ["1 images that failed before are tried again"]
    assert list(read_images_list(path).image) == ["a.fits", "dir/b, with comma.png", "c.jpg"]
    with writer:
        writer.append(images_row("d.fits", 0, 5, 5))
    listed = read_images_list(path)
    assert list(listed.image) == ["a.fits", "dir/b, with comma.png", "c.jpg", "d.fits"]
    assert (listed.status == "ok").all()


def test_resume_refuses_files_that_do_not_belong_together(tmp_path):
    path = tmp_path / "d.csv"
    write_detections(pd.DataFrame(columns=COLUMNS), path, pd.DataFrame([images_row("x.png", 0, 1, 1)]))
    with pytest.raises(DetectionsFileError, match="cannot resume: its columns are"):
        DetectionsWriter(path, resume=True)
    write_streamed(path, image_tables())
    images_list_path(path).unlink()
    with pytest.raises(DetectionsFileError, match=r"d\.images\.csv: missing, so .*d\.csv cannot be resumed"):
        DetectionsWriter(path, resume=True)
    write_streamed(path, image_tables())
    listed = read_images_list(path)
    listed.loc[0, "n_detections"] = 5
    write_detections(read_detections(path), path, listed)
    with pytest.raises(DetectionsFileError, match="2 rows of 'a.fits' but its images list says 5"):
        DetectionsWriter(path, resume=True)


def test_resume_changes_nothing_in_files_it_refuses(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_bytes(b"a,b\n1,2\n3,")  # someone else's CSV, no newline at the end
    images_list_path(path).write_bytes(b"x\n1")
    with pytest.raises(DetectionsFileError, match="cannot resume: its columns are 'a,b'"):
        DetectionsWriter(path, resume=True)
    assert path.read_bytes() == b"a,b\n1,2\n3," and images_list_path(path).read_bytes() == b"x\n1"
    write_streamed(path, image_tables())
    with open(path, "ab") as handle:
        handle.write(b"a.fits,clump,0.5\n")  # a short record
    before = path.read_bytes()
    with pytest.raises(DetectionsFileError, match="record 5 has 3 fields, expected 14"):
        DetectionsWriter(path, resume=True)
    assert path.read_bytes() == before


def test_outputs_that_cannot_be_written_fail_at_once(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match=r"file/sub/d\.csv: cannot make its folder: .*file is a file"):
        DetectionsWriter(tmp_path / "file" / "sub" / "d.csv")
    with pytest.raises(OutputPathError, match="is a folder"):
        DetectionsWriter(tmp_path)
    DetectionsWriter(tmp_path / "new" / "folder" / "d.csv")  # made when opened
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------------------- the command line


def test_bad_paths_and_outputs_fail_before_the_model_loads(tmp_path, image_files, monkeypatch, capsys):
    import napari_clumps.model

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(napari_clumps.model, "get_detector", no_model)
    out = tmp_path / "d.csv"
    png = str(image_files["png"])
    for args, message in [
        ([png, str(tmp_path / "nope.fits"), "--out", str(out)], f"{tmp_path / 'nope.fits'}: no such file or folder"),
        ([str(tmp_path / "notes.txt"), "--out", str(out)], f"{tmp_path / 'notes.txt'}: no such file or folder"),
        ([png, "--out", f"{png}/d.csv"], f"{png}/d.csv: cannot make its folder: {png} is a file"),
        ([png, "--out", str(tmp_path)], f"{tmp_path}: is a folder; give a file name"),
    ]:
        assert main(["detect", *args]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: {message}"]
    (tmp_path / "notes.txt").write_text("x")
    assert main(["detect", str(tmp_path / "notes.txt"), "--out", str(out)]) == 1
    assert "notes.txt: unsupported file type" in capsys.readouterr().err
    assert not out.exists() and not images_list_path(out).exists()


def test_a_bad_path_costs_no_torch_import(tmp_path):
    code = (
        "import sys\nfrom napari_clumps.cli import main\n"
        f"status = main(['detect', {str(tmp_path / 'nope.fits')!r}])\n"
        "print(status, sorted(m for m in ('torch', 'pandas', 'astropy') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env())
    assert result.stdout.split("\n")[0] == "1 []", result.stdout + result.stderr
    assert result.stderr.strip() == f"error: {tmp_path / 'nope.fits'}: no such file or folder"


@pytest.mark.parametrize(
    "option, message",
    [
        (["--score-threshold", "1.5"], "argument --score-threshold: 1.5 is not in [0, 1]"),
        (["--batch-size", "0"], "argument --batch-size: 0 is not at least 1"),
        (["--nms-iou", "0"], "argument --nms-iou: 0 is not in (0, 1]"),
        (["--num-workers", "-1"], "argument --num-workers: -1 is not at least 0"),
        (["--psf-fwhm", "nan"], "argument --psf-fwhm: nan is not above 0"),
        (["--seeing", "two"], "argument --seeing: 'two' is not a number"),
        (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    ],
)
def test_a_bad_option_value_is_one_line(option, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["detect", "x.png", *option])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {message}") and "napari-clumps detect --help" in err[0], err


def test_debug_works_after_the_command(tmp_path):
    from napari_clumps.io import ImageReadError

    assert main(["detect", str(tmp_path / "nope.png")]) == 1
    for argv in (["--debug", "detect", str(tmp_path / "nope.png")], ["detect", str(tmp_path / "nope.png"), "--debug"]):
        with pytest.raises(ImageReadError, match="no such file or folder"):
            main(argv)


def first_images(source, n: int, folder):
    """A new ``folder`` with copies of the first ``n`` files of ``source``."""
    import shutil

    folder.mkdir()
    for path in sorted(source.iterdir())[:n]:
        shutil.copy(path, folder)
    return folder


def test_files_deleted_or_spoiled_during_a_run_are_reported_and_skipped(
    tmp_path, small_images, random_model, monkeypatch, capsys, one_thread
):
    import napari_clumps.io

    folder = first_images(small_images, 4, tmp_path / "images")
    real_find_images = napari_clumps.io.find_images

    def find_then_spoil(*args, **kwargs):
        found = real_find_images(*args, **kwargs)
        (folder / "g001.png").unlink()
        (folder / "g002.png").write_bytes(b"not a png")
        return found

    monkeypatch.setattr(napari_clumps.io, "find_images", find_then_spoil)
    out = tmp_path / "d.csv"
    assert main(detect_args(folder, random_model, out)) == 1
    captured = capsys.readouterr()
    assert f"error: {folder / 'g001.png'}: no such file" in captured.err
    assert f"error: {folder / 'g002.png'}: not a readable JPEG/PNG image" in captured.err
    listed = read_images_list(out).set_index("image")
    assert list(listed.status) == ["ok", "failed", "failed", "ok"]
    found = read_detections(out)
    assert set(found.image) == {"g000.png", "g003.png"} and (found.model == "random-resnet10t").all()
    assert "clumps in 2 images (2 failed) in" in captured.out and "images/s" in captured.out


def test_reading_in_worker_processes_gives_the_same_files(tmp_path, small_images, random_model, one_thread):
    main(detect_args(small_images, random_model, tmp_path / "here.csv"))
    main([*detect_args(small_images, random_model, tmp_path / "workers.csv"), "--num-workers", "2"])
    assert (tmp_path / "workers.csv").read_bytes() == (tmp_path / "here.csv").read_bytes()
    assert (tmp_path / "workers.images.csv").read_bytes() == (tmp_path / "here.images.csv").read_bytes()


def test_ctrl_c_keeps_the_finished_images_and_resume_completes_the_run(
    tmp_path, small_images, random_model, monkeypatch, capsys, one_thread
):
    folder = first_images(small_images, 8, tmp_path / "images")
    append = DetectionsWriter.append

    def append_then_interrupt(writer, row, table=None):
        append(writer, row, table)
        if writer.n_images == 3:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C does

    monkeypatch.setattr(DetectionsWriter, "append", append_then_interrupt)
    out = tmp_path / "stopped.csv"
    assert main(detect_args(folder, random_model, out)) == 128 + signal.SIGINT
    err = capsys.readouterr().err
    assert "SIGINT: stopping after the current batch" in err  # not the KeyboardInterrupt path
    done = read_images_list(out)
    assert len(done) == 3 and "stopped by SIGINT: 5 of 8 images left" in err
    monkeypatch.setattr(DetectionsWriter, "append", append)
    assert main([*detect_args(folder, random_model, out), "--resume"]) == 0
    whole = tmp_path / "whole.csv"
    assert main(detect_args(folder, random_model, whole)) == 0
    assert out.read_bytes() == whole.read_bytes()
    assert images_list_path(out).read_bytes() == images_list_path(whole).read_bytes()


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_resume_completes_the_run(tmp_path, small_images, random_model, capsys, one_thread):
    out = tmp_path / "killed.csv"
    listed = images_list_path(out)
    process = subprocess.Popen(
        [sys.executable, "-m", "napari_clumps", *detect_args(small_images, random_model, out)],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not (listed.exists() and len(listed.read_bytes().splitlines()) > 3):  # header + 3 images
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no rows after 3 minutes"
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "SIGTERM: stopping after the current batch" in stderr
    done = read_images_list(out)
    assert 3 <= len(done) < N_IMAGES and (done.status == "ok").all()
    assert f"stopped by SIGTERM: {N_IMAGES - len(done)} of {N_IMAGES} images left" in stderr
    assert f"clumps in {len(done)} images (0 failed)" in stdout
    partial = read_detections(out)  # a valid CSV of the finished images, nothing else
    counts = partial.groupby("image").size().reindex(done.image, fill_value=0)
    assert (counts.to_numpy() == done.n_detections.to_numpy()).all()

    assert main([*detect_args(small_images, random_model, out), "--resume"]) == 0
    captured = capsys.readouterr()
    assert f"resuming {out}: {len(done)} of {N_IMAGES} images done, {N_IMAGES - len(done)} to do" in captured.err
    assert f"; with the earlier run: {N_IMAGES} images" in captured.out
    whole = tmp_path / "whole.csv"
    assert main(detect_args(small_images, random_model, whole)) == 0
    assert len(read_detections(whole)) > N_IMAGES  # the random network finds plenty
    assert out.read_bytes() == whole.read_bytes()
    assert listed.read_bytes() == images_list_path(whole).read_bytes()

    assert main([*detect_args(small_images, random_model, out), "--resume"]) == 0
    assert "nothing to do: all 24 images are in" in capsys.readouterr().out
