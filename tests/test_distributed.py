"""Detection on a Dask cluster (``--workers`` / ``--scheduler``, :mod:`napari_clumps.distributed`):
the same rows as one process, a worker killed mid-run costs no rows, a failed chunk is reported,
and the options are checked before a model loads.

The detector is the small random network of test_streaming.py (its rows are nonsense but many
and deterministic). Worker processes run torch on one thread (Dask's default for its workers);
the one-process runs here do too, so that the sums are the same bit for bit.
"""

import os
import signal
import subprocess
import sys

import pandas as pd
import pytest
import test_streaming
from test_streaming import SOURCE, detect_args, subprocess_env

from napari_clumps.cli import main
from napari_clumps.detections import read_detections, read_images_list

pytest.importorskip("distributed")

N_IMAGES = 20
# test_streaming.py's fixtures: the small random model, one torch thread
random_model, one_thread = test_streaming.random_model, test_streaming.one_thread


@pytest.fixture(scope="module")
def simulated_small(tmp_path_factory):
    """N_IMAGES simulated galaxies of 64 x 64 pixels as JPEGs (and their FITS files)."""
    from napari_clumps.simulate import SimulationSettings, write_dataset

    folder = tmp_path_factory.mktemp("sim")
    write_dataset(folder, n=N_IMAGES, seed=3, settings=SimulationSettings(size=64))
    return folder


@pytest.fixture
def worker_path(monkeypatch):
    """Worker processes import this checkout's package."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([SOURCE, *filter(None, [os.environ.get("PYTHONPATH")])]))


def sorted_rows(path):
    rows = read_detections(path)
    return rows.sort_values(["image", "score", "x_min", "y_min"], kind="stable").reset_index(drop=True)


def sorted_images(path):
    return read_images_list(path).sort_values("image").reset_index(drop=True)


def one_process_rows(images, model, tmp_path):
    out = tmp_path / "one.csv"
    assert main(detect_args(images, model, out)) == 0
    return out


# ------------------------------------------------------------------ checked before any work


def test_import_does_not_import_dask():
    code = "import sys, napari_clumps, napari_clumps.distributed; print('distributed' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env())
    assert done.stdout.strip() == "False", done.stderr


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--workers", "0"], "--workers: 0 is not at least 1"),
        (["--workers", "2", "--scheduler", "tcp://localhost:8786"], "not allowed with argument"),
        (["--chunk-size", "0"], "--chunk-size: 0 is not at least 1"),
    ],
)
def test_cluster_options_are_checked(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as stop:
        main(["detect", str(tmp_path), "--model", "nowhere.safetensors", *extra])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_without_dask_one_line_before_the_model(tmp_path, capsys, monkeypatch, small_png):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    out = tmp_path / "d.csv"
    assert main(["detect", str(small_png), "--model", "nowhere.safetensors", "--out", str(out), "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "napari-clumps[dask]"' in err and "nowhere" not in err
    assert not out.exists()


def test_num_workers_does_not_go_with_a_cluster(tmp_path, capsys, small_png):
    args = ["detect", str(small_png), "--model", "nowhere.safetensors", "--workers", "2", "--num-workers", "2"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "--num-workers" in err and "nowhere" not in err


@pytest.fixture
def small_png(tmp_path):
    import numpy as np
    from PIL import Image

    path = tmp_path / "g.png"
    Image.fromarray(np.full((32, 32, 3), 50, np.uint8)).save(path)
    return path


def test_chunks():
    from napari_clumps.distributed import chunked

    assert chunked(range(5), 2) == [[0, 1], [2, 3], [4]]
    assert chunked([], 3) == []
    with pytest.raises(ValueError):
        chunked([1], 0)


def test_a_detector_object_is_refused():
    from napari_clumps.distributed import iter_detections_on_cluster
    from napari_clumps.model import Detector

    with pytest.raises(TypeError, match="model name or file"):
        next(iter_detections_on_cluster([], Detector.__new__(Detector), client=object()))


# ------------------------------------------------------------------ real clusters


def test_failed_chunk_is_reported_and_the_run_goes_on(simulated_small, tmp_path):
    """A chunk that raises on the worker (here: a model file the workers cannot read) is tried
    again, then each of its images gets a failed row with the reason."""
    import distributed

    from napari_clumps.distributed import iter_detections_on_cluster
    from napari_clumps.io import find_images

    found = find_images([simulated_small])[:5]
    with (
        distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        results = list(
            iter_detections_on_cluster(found, tmp_path / "gone.safetensors", client, chunk_size=2, retries=1)
        )
    assert sorted(r.name for r in results) == sorted(name for _, name in found)
    for result in results:
        assert result.error and "failed on the cluster after 1 retries" in result.error
        assert "gone.safetensors" in result.error
        assert result.images_row()["status"] == "failed"


@pytest.mark.slow
def test_two_worker_processes_give_the_rows_of_one(simulated_small, random_model, tmp_path, worker_path, one_thread):
    one = one_process_rows(simulated_small, random_model, tmp_path)
    two = tmp_path / "two.csv"
    assert main([*detect_args(simulated_small, random_model, two), "--workers", "2", "--chunk-size", "3"]) == 0
    assert len(sorted_rows(one)) > N_IMAGES  # many rows, not a trivial comparison
    pd.testing.assert_frame_equal(sorted_rows(one), sorted_rows(two))
    pd.testing.assert_frame_equal(sorted_images(one), sorted_images(two))
    assert len(sorted_images(two)) == 2 * N_IMAGES  # the FITS files and the JPEGs

    # --resume on a cluster: the images list says what is done
    assert main([*detect_args(simulated_small, random_model, two), "--workers", "2", "--resume"]) == 0
    pd.testing.assert_frame_equal(sorted_rows(one), sorted_rows(two))


@pytest.mark.slow
def test_a_worker_killed_mid_run_costs_no_rows(simulated_small, random_model, tmp_path, worker_path, one_thread):
    from napari_clumps.distributed import dask_client, iter_detections_on_cluster
    from napari_clumps.inference import iter_detections
    from napari_clumps.io import find_images

    found = find_images([simulated_small])
    options = {"batch_size": 1, "keep_off_host": True}
    expected = {
        r.name: r.table
        for r in iter_detections([p for p, _ in found], random_model, names=[n for _, n in found], **options)
    }
    got = {}
    with dask_client(workers=2) as client:
        pids = client.run(os.getpid)
        victim = sorted(pids.values())[0]
        for result in iter_detections_on_cluster(found, random_model, client, chunk_size=2, **options):
            if not got:  # the first image is in: a worker dies with its chunks in hand
                os.kill(victim, signal.SIGKILL)
            assert result.name not in got
            got[result.name] = result
        after = set(client.run(os.getpid).values())
    assert victim not in after  # it did die (and was started again)
    assert sorted(got) == sorted(expected)
    for name, result in got.items():
        assert not result.error, result.error
        pd.testing.assert_frame_equal(result.table, expected[name])


@pytest.mark.slow
def test_an_existing_scheduler_is_used_and_left_running(
    simulated_small, random_model, tmp_path, worker_path, one_thread
):
    """``--scheduler ADDRESS``: a cluster started elsewhere (here: in this process) does the work
    and is still there afterwards, for the next run."""
    from distributed import Client, LocalCluster

    one = one_process_rows(simulated_small, random_model, tmp_path)
    out = tmp_path / "scheduled.csv"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        args = [*detect_args(simulated_small, random_model, out), "--scheduler", cluster.scheduler_address]
        assert main(args) == 0
        pd.testing.assert_frame_equal(sorted_rows(one), sorted_rows(out))
        with Client(cluster.scheduler_address) as client:
            assert len(client.scheduler_info()["workers"]) == 1  # not shut down by the run
