"""What a batch run costs beyond the network: `napari-clumps detect` (streaming) vs the forward
pass alone, the start-up, and peak memory against the number of images.

usage: python benchmarks/batch_run.py [--n 100] [--images DIR] [--threads 1,2] [--repeats 2]
                                      [--rss 1000,3000] [--startup] [--out docs/benchmarks/batch_run.md]

Each part replaces only its own section of --out (benchmarks/report.py); --threads '' and
--rss '' skip those parts, --no-startup the start-up one.

1. Throughput on --n simulated 200 x 200 cutouts (n/2 galaxies, FITS + JPEG; `simulate` seed 7),
   or the first --n images of --images DIR (real cutouts), with the packaged default model,
   batch 4, CPU, in this process after a warm-up (imports and first calls excluded), for each
   number of torch threads in --threads; the best of --repeats runs of each:
   - forward only: the network on the cutouts' tensors, read and made beforehand, batches of 4;
   - iter_detections, tables kept in memory: reading, composite, network, NMS, host columns;
   - `detect` as the CLI runs it (main()), streaming rows to the CSV; the time inside
     DetectionsWriter.append is measured separately; then with --num-workers 1 and 2 (reading
     and the host galaxy in worker processes, overlapped with the network).
2. Start-up: wall time of `python -m napari_clumps detect` subprocesses (a bad path; one JPEG),
   and the import time of the heavy packages a run needs (`python -X importtime`).
3. Peak RSS (ru_maxrss) of `python -m napari_clumps detect` over --rss counts of 64 x 64 PNGs
   (noise and three blobs) with a small *untrained* detector (resnet10t, random weights, score
   threshold 0.3: about 16 rows per image), batch 8, --keep-off-host, one torch thread.
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import write_section

ROOT = Path(__file__).resolve().parents[1]


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def env(**extra):
    e = dict(os.environ, **extra)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [e.get("PYTHONPATH")])])
    return e


def throughput(args, work: Path, threads: int) -> list[str]:
    import torch

    import napari_clumps.detections as detections
    from napari_clumps.cli import main
    from napari_clumps.inference import image_tensor, iter_detections
    from napari_clumps.io import find_images, read_image
    from napari_clumps.model import get_detector
    from napari_clumps.simulate import write_dataset

    torch.set_num_threads(threads)
    if args.images:
        folder = work / "given"
        if not folder.exists():  # the first --n of them, linked into a folder that detect reads whole
            folder.mkdir()
            for path, name in find_images([args.images])[: args.n]:
                (folder / name.replace("/", "_")).symlink_to(Path(path).resolve())
    else:
        folder = work / "cutouts"
        if not folder.exists():
            write_dataset(folder, n=args.n // 2, seed=7)
    found = find_images([folder])
    paths, names = [p for p, _ in found], [n for _, n in found]
    detector = get_detector("default", "cpu")
    list(iter_detections(paths[:4], detector, names=names[:4]))  # warm-up: imports, first calls

    def forward_only():
        tensors = [image_tensor(read_image(p)) for p in paths]
        with timer() as took, torch.inference_mode():
            for i in range(0, len(tensors), 4):
                detector.network(tensors[i : i + 4])
        return took

    def in_memory():
        with timer() as took:
            tables = [r.table for r in iter_detections(paths, detector, names=names, batch_size=4)]
        assert len(tables) == len(paths)
        return took

    def reading_only():
        with timer() as took:
            for path in paths:
                read_image(path)
        return took

    def host_only():
        from napari_clumps.host import find_host

        images = [read_image(p) for p in paths]
        with timer() as took:
            for image in images:
                find_host(image)
        return took

    appending = [0.0]
    append = detections.DetectionsWriter.append

    def timed_append(self, row, table=None):
        start = time.perf_counter()
        append(self, row, table)
        appending[0] += time.perf_counter() - start

    detections.DetectionsWriter.append = timed_append

    def cli(*more):
        def run():
            appending[0] = 0.0
            with timer() as took:
                status = main(["detect", str(folder), "--out", str(work / "d.csv"), "--batch-size", "4", *more])
            assert status == 0
            return took

        return run

    runs = {
        "forward only (tensors in memory)": forward_only,
        "iter_detections, tables in memory": in_memory,
        "`detect`, streaming to the CSV": cli(),
        "`detect --num-workers 1` (reading and host in a second process)": cli("--num-workers", "1"),
        "`detect --num-workers 2`": cli("--num-workers", "2"),
    }
    times, writer_times = {name: [] for name in runs}, []
    for _ in range(args.repeats):  # interleaved, so that a busy moment hits every row alike
        for name, run in runs.items():
            times[name].append(run())
            if name == "`detect`, streaming to the CSV":
                writer_times.append(appending[0])
            print(name, times[name][-1], f"load {load()}", flush=True)
    detections.DetectionsWriter.append = append
    parts = {
        "reading and colour composite (`io.read_image`)": reading_only,
        "host galaxy (`host.find_host`)": host_only,
    }
    part_times = {name: [run() for _ in range(args.repeats)] for name, run in parts.items()}
    n = len(paths)
    wall0 = min(t["wall"] for t in times["forward only (tensors in memory)"])
    cpu0 = min(t["cpu"] for t in times["forward only (tensors in memory)"])
    shape = read_image(paths[0]).composite.shape
    what = f"real ({args.images.name})" if args.images else "simulated"
    lines = [
        f"### Throughput: {n} {what} {shape[1]} x {shape[0]} cutouts, packaged default model, batch 4, "
        f"{threads} torch thread{'s' if threads > 1 else ''}, best of {args.repeats}",
        "",
        "Wall time, and CPU time of this process and its reading workers (user + system; less "
        "sensitive to other jobs on a shared machine, but it counts spinning threads).",
        "",
        "| run | wall s | images/s | wall ms per image | CPU ms per image | beyond the forward pass "
        "(wall / CPU ms per image) |",
        "|---|---|---|---|---|---|",
    ]
    for name, values in times.items():
        wall, cpu = min(t["wall"] for t in values), min(t["cpu"] for t in values)
        lines.append(
            f"| {name} | {wall:.1f} | {n / wall:.2f} | {1000 * wall / n:.0f} | {1000 * cpu / n:.0f} | "
            + (
                "-"
                if wall == wall0
                else f"{1000 * (wall - wall0) / n:+.0f} / {1000 * (cpu - cpu0) / n:+.0f} "
                f"({100 * (wall - wall0) / wall0:+.0f} % wall)"
            )
            + " |"
        )
    lines += ["", "Parts of the pipeline, each measured alone on the same images:", ""]
    lines += ["| part | wall ms per image | CPU ms per image |", "|---|---|---|"]
    for name, values in part_times.items():
        wall, cpu = min(t["wall"] for t in values), min(t["cpu"] for t in values)
        lines.append(f"| {name} | {1000 * wall / n:.1f} | {1000 * cpu / n:.1f} |")
    lines.append(
        f"| writing (inside `DetectionsWriter.append` during the `detect` runs) | "
        f"{1000 * min(writer_times) / n:.2f} (median {1000 * statistics.median(writer_times) / n:.2f}) | - |"
    )
    return lines


class timer:
    """Wall and CPU seconds of a block (CPU: this process and the children it reaped)."""

    def __enter__(self):
        self.result = {}
        self.start = (time.perf_counter(), self.cpu())
        return self.result

    def __exit__(self, *exc):
        self.result.update(wall=time.perf_counter() - self.start[0], cpu=self.cpu() - self.start[1])

    @staticmethod
    def cpu() -> float:
        import resource

        own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def startup(work: Path) -> list[str]:
    from PIL import Image

    from napari_clumps.samples import hubble_image

    jpeg = work / "one.jpg"
    Image.fromarray(hubble_image().composite[:200, :200]).save(jpeg)
    cases = {
        "a path that does not exist": ["detect", str(work / "nope.fits")],
        "`--score-threshold 1.5`": ["detect", str(jpeg), "--score-threshold", "1.5"],
        "one 200 px JPEG, packaged model": ["detect", str(jpeg), "--out", str(work / "one.csv")],
    }
    lines = ["### Start-up (wall time of a fresh `python -m napari_clumps` process, best of 3)", ""]
    lines += ["| command | s |", "|---|---|"]
    for name, argv in cases.items():
        walls = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "napari_clumps", *argv], env=env(), capture_output=True)
            walls.append(time.perf_counter() - start)
        lines.append(f"| {name} | {min(walls):.2f} |")
        print(name, walls, flush=True)
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "napari_clumps", *cases["one 200 px JPEG, packaged model"]],
        env=env(),
        capture_output=True,
        text=True,
    )
    top, total = {}, 0.0
    for line in result.stderr.splitlines():
        parts = line.split("|")
        if line.startswith("import time:") and len(parts) == 3 and parts[1].strip().isdigit():
            total += int(parts[0].split(":")[1]) / 1e6
            if not parts[2].startswith("  "):  # top level: not imported by another module's import
                top[parts[2].strip()] = int(parts[1]) / 1e6
    big = sorted(((s, n) for n, s in top.items() if s >= 0.05), reverse=True)
    lines += [
        "",
        f"Imports of the one-image run (`python -X importtime`): {total:.1f} s in all; the top-level "
        "ones of 0.05 s or more (cumulative): " + ", ".join(f"{name} {seconds:.2f} s" for seconds, name in big) + ".",
    ]
    return lines


def peak_rss(args, work: Path) -> list[str]:
    import numpy as np
    import torch
    from PIL import Image

    from napari_clumps.model import new_detector, save_model

    torch.manual_seed(0)
    detector = new_detector("resnet10t", backbone_weights=None)
    detector.provenance = {"model_id": "random-resnet10t", "score_threshold": 0.3}
    model = save_model(detector, work / "random.safetensors")
    counts = [int(c) for c in args.rss.split(",")]
    folder = work / "small"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:64, :64]
    for i in range(max(counts)):
        image = rng.normal(20, 5, (64, 64, 3))
        for x, y in rng.uniform(10, 54, (3, 2)):
            image += 200 * np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / 8)[..., None]
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"g{i:05d}.png")
    lines = [
        "### Peak memory against the number of images",
        "",
        "64 x 64 PNGs, untrained resnet10t (random weights, ~16 rows per image), batch 8, "
        "--keep-off-host, one torch thread.",
        "",
        "| images | rows written | peak RSS (MiB) | s | images/s |",
        "|---|---|---|---|---|",
    ]
    code = (
        "import resource, runpy, sys\n"
        "sys.argv = ['napari-clumps'] + sys.argv[1:]\n"
        "try:\n    runpy.run_module('napari_clumps', run_name='__main__')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    for count in counts:
        subset = work / f"small_{count}"
        subset.mkdir()
        for path in sorted(folder.iterdir())[:count]:
            (subset / path.name).symlink_to(path)
        out = work / f"rss_{count}.csv"
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-c", code, "detect", str(subset), "--model", str(model), "--out", str(out)]
            + ["--batch-size", "8", "--keep-off-host"],
            env=env(OMP_NUM_THREADS="1"),
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
        assert result.returncode == 0, result.stderr[-2000:]
        rss = int(result.stdout.split("RSS")[-1]) / 1024  # KiB on Linux
        n_rows = sum(1 for _ in open(out)) - 1
        lines.append(f"| {count:,} | {n_rows:,} | {rss:.0f} | {seconds:.0f} | {count / seconds:.1f} |")
        print(lines[-1], f"load {load()}", flush=True)
    return lines


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--threads", default="1,2", help="torch threads of the throughput runs, one table each")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rss", default="1000,3000", help="image counts for the memory runs ('' to skip)")
    parser.add_argument("--images", type=Path, default=None, help="real cutouts instead of simulated ones")
    parser.add_argument("--no-startup", dest="startup", action="store_false", help="skip the start-up part")
    parser.add_argument("--out", default=ROOT / "docs/benchmarks/batch_run.md")
    args = parser.parse_args()
    import torch

    def save(name: str, lines: list[str], started: float, load_before: str) -> None:
        footer = (
            f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (load average "
            f"{load_before} before, {load()} after), torch {torch.__version__}, Python "
            f"{platform.python_version()}; {time.perf_counter() - started:.0f} s. Made by `python "
            f"benchmarks/batch_run.py {' '.join(sys.argv[1:])}`."
        )
        text = "\n".join([*lines, "", footer])
        write_section(args.out, name, text, title="# Batch runs: streaming overhead, start-up, memory")
        print(text, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = "real" if args.images else "simulated"
        for threads in map(int, filter(None, args.threads.split(","))):  # "" skips the throughput runs
            started, before = time.perf_counter(), load()
            save(f"throughput {source} {threads}", throughput(args, work, threads), started, before)
        if args.startup:
            started, before = time.perf_counter(), load()
            save("start-up", startup(work), started, before)
        if args.rss:
            started, before = time.perf_counter(), load()
            save("memory", peak_rss(args, work), started, before)


if __name__ == "__main__":
    main()
