"""`napari-clumps detect --workers 2` (a local Dask cluster) against one process, on the same files.

usage: python benchmarks/dask_run.py [--n 100] [--workers 2] [--out docs/benchmarks/batch_run.md]

--n simulated 200 x 200 cutouts (n/2 galaxies, FITS + JPEG; `simulate` seed 7), the packaged
default model, batch 4, CPU. Each run is a fresh `python -m napari_clumps detect` process, timed
whole (start-up, model loading and, for the cluster, starting the workers included):
- one process, one torch thread (OMP_NUM_THREADS=1);
- one process, torch's default threads (one per core);
- --workers N: N worker processes of one thread each (Dask gives its workers one torch thread).
The rows of each run are compared with the first's (sorted): they must be identical. The load
average is printed before and after: other jobs may share the machine.
"""

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import write_section

ROOT = Path(__file__).resolve().parents[1]


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def run(args, **extra) -> tuple[float, str]:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "napari_clumps", *args], capture_output=True, text=True, env=env, check=False
    )
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr}")
    return seconds, done.stderr + done.stdout


def rows(path):
    import pandas as pd

    table = pd.read_csv(path)
    return table.sort_values(list(table.columns[:7])).reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run(["simulate", str(tmp / "images"), "--n", str(args.n // 2), "--seed", "7"])
        cases = [
            ("one process, 1 torch thread", [], {"OMP_NUM_THREADS": "1"}),
            (f"one process, torch's default threads ({os.cpu_count()})", [], {}),
            (f"`--workers {args.workers}` (1 torch thread each)", ["--workers", str(args.workers)], {}),
        ]
        lines, first = [], None
        for label, extra, env in cases:
            out = tmp / f"{len(lines)}.csv"
            before = load()
            seconds, text = run(["detect", str(tmp / "images"), "--out", str(out), *extra], **env)
            ready = re.search(r"ready in ([0-9.]+) s", text)
            table = rows(out)
            same = "-" if first is None else ("yes" if table.equals(first) else "no (see the note)")
            first = table if first is None else first
            lines.append(
                f"| {label} | {seconds:.1f} | {args.n / seconds:.2f} | {ready.group(1) if ready else '-'} | "
                f"{len(table)} | {same} | {before} -> {load()} |"
            )
            print(lines[-1], flush=True)
    report = "\n".join(
        [
            f"### `--workers {args.workers}` vs one process: {args.n} simulated 200 x 200 cutouts, packaged "
            "default model, batch 4, CPU",
            "",
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
            f"`python benchmarks/dask_run.py --n {args.n} --workers {args.workers}`. Whole `detect` processes "
            "(start-up, model loading and starting the cluster included).",
            "",
            "| run | wall s | images/s | cluster ready after (s) | rows | rows identical to the first run's "
            "| load average (1/5/15 min) before -> after |",
            "|---|---|---|---|---|---|---|",
            *lines,
            "| GPU workers | not measured (no GPU here) | | | | | |",
            "",
        ]
    )
    print(report)
    if args.out:
        write_section(args.out, "dask", report, title="# Batch runs: streaming overhead, start-up, memory")


if __name__ == "__main__":
    main()
