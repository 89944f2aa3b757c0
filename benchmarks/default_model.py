"""The packaged default model: file size, load time and detection time per cutout on this CPU.

usage: python benchmarks/default_model.py [--repeats 5] [--threads 2] [--out docs/benchmarks/default_model.md]

Load time: `load_model` of the packaged file (torch already imported), median of --repeats.
Detection time: `detect()` on a simulated 200 x 200 cutout and on a 424 x 424 one (the same galaxy
resampled), end to end (array in, table out), median of --repeats after a warm-up; and the
host-galaxy step alone (`find_host`), which default-v5 added to the same network as default-v4:
the ratio end to end / (end to end - host step) is v5's cost relative to v4 as it shipped.
"""

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from napari_clumps.composite import lupton_composite
from napari_clumps.host import find_host
from napari_clumps.inference import detect
from napari_clumps.model import load_model, packaged_model_path
from napari_clumps.simulate import simulate_galaxy


def median_seconds(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=Path(__file__).resolve().parents[1] / "docs/benchmarks/default_model.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = packaged_model_path()
    load = median_seconds(lambda: load_model(path), args.repeats)
    detector = load_model(path)
    galaxy = simulate_galaxy(3, 1)
    small = lupton_composite(galaxy.bands, ("g", "r", "i"))
    large = np.asarray(
        torch.nn.functional.interpolate(
            torch.from_numpy(small).permute(2, 0, 1)[None].float(), size=(424, 424), mode="bilinear"
        )[0]
        .permute(1, 2, 0)
        .round()
        .clamp(0, 255)
        .byte()
    )
    detect(small, detector)  # warm-up
    cells = []
    for image in (small, large):
        total = 1000 * median_seconds(lambda image=image: detect(image, detector), args.repeats)
        host = 1000 * median_seconds(lambda image=image: find_host(image), args.repeats)
        cells.append(f"{total:.0f} ms (host step {host:.0f} ms, {total / (total - host):.2f}x)")
    lines = [
        f"CPU: {platform.machine()}, {args.threads} threads, torch {torch.__version__}; median of "
        f"{args.repeats}. Made by `python benchmarks/default_model.py`. In brackets: the host-galaxy",
        "step alone and the cost of end to end relative to the network without it (default-v4).",
        "",
        "| file size | load time | detect, 200 x 200 cutout | detect, 424 x 424 cutout |",
        "|---|---|---|---|",
        f"| {path.stat().st_size / 1e6:.1f} MB | {load:.2f} s | {cells[0]} | {cells[1]} |",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
