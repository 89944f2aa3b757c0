"""Inference speed per cutout on this machine, for every built-in architecture vs the paper's setup.

usage: python benchmarks/inference_speed.py [--repeats 3] [--threads 2] [--out docs/benchmarks/inference_speed.md]

Each network is built with random weights (no download) and timed on single 200 x 200 and
424 x 424 colour cutouts (batch 1, torch.inference_mode, CPU), median of --repeats runs after
one warm-up. Untrained heads keep the full proposal budget, so these are upper bounds for the
timm models; the paper's setup is torchvision's fasterrcnn_resnet50_fpn at its default size
(min_size 800: a 200 px crop is upsampled 4x), as Popp et al. 2024 ran it.
Also times a trained model file if given with --model.
"""

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from napari_clumps.model import BACKBONES, build_detector, config_for, load_model


def time_network(network, in_chans, size, repeats):
    image = [torch.rand(in_chans, size, size, generator=torch.Generator().manual_seed(0))]
    network.eval()
    with torch.inference_mode():
        network(image)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            network(image)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", action="append", default=[], help="also time this model file")
    parser.add_argument("--out", default=Path(__file__).resolve().parents[1] / "docs/benchmarks/inference_speed.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in BACKBONES:
        config = config_for(name)
        network = build_detector(config, backbone_weights=None)
        params = sum(p.numel() for p in network.parameters()) / 1e6
        ms = [time_network(network, config.in_chans, size, args.repeats) for size in (200, 424)]
        rows.append((name, params, *ms))
        print(rows[-1], flush=True)
    for path in args.model:
        detector = load_model(path)
        params = sum(p.numel() for p in detector.network.parameters()) / 1e6
        ms = [time_network(detector.network, detector.config.in_chans, size, args.repeats) for size in (200, 424)]
        rows.append((f"trained: {Path(path).name}", params, *ms))
        print(rows[-1], flush=True)
    paper = next(r for r in rows if r[0] == "paper-resnet50-fpn")
    lines = [
        f"CPU: {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}; "
        f"median of {args.repeats} runs, batch 1. Made by `python benchmarks/inference_speed.py`.",
        "",
        "| model | parameters (M) | ms per 200x200 | ms per 424x424 | speed-up vs paper at 200 px |",
        "|---|---|---|---|---|",
    ]
    for name, params, ms200, ms424 in rows:
        lines.append(f"| {name} | {params:.1f} | {ms200:.0f} | {ms424:.0f} | {paper[2] / ms200:.1f}x |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
