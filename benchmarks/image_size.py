"""What one cutout costs against its size: `detect` per image at 200, 424, 1000 and 2000 px.

usage: python benchmarks/image_size.py [--sizes 200,424,1000,2000] [--n 4] [--out docs/benchmarks/image_size.md]

--n simulated galaxies (`simulate` seed 11, 200 px JPEGs) resized to each side with PIL (bicubic;
the galaxy and its clumps grow with the image, as a closer or better-resolved galaxy would), run
through `iter_detections` with the packaged default model on the CPU, one torch thread, batch 1,
after a warm-up at each size; per image: the whole call, and the host-galaxy step alone
(`host.find_host`). The number of images does not enter: a batch run's cost is this per-image
cost times the number of images (batch_run.md: memory stays flat, the writer costs 0.5 ms).
"""

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="200,424,1000,2000")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--out", default=ROOT / "docs/benchmarks/image_size.md")
    args = parser.parse_args()
    import torch
    from PIL import Image

    from napari_clumps.host import find_host
    from napari_clumps.inference import iter_detections
    from napari_clumps.io import read_image
    from napari_clumps.model import get_detector
    from napari_clumps.simulate import write_dataset

    torch.set_num_threads(1)
    detector = get_detector("default", "cpu")
    load_before = "/".join(f"{x:.1f}" for x in os.getloadavg())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(Path(tmp) / "sim", n=args.n, seed=11)
        originals = sorted((Path(tmp) / "sim").glob("*.jpg"))
        for side in map(int, args.sizes.split(",")):
            folder = Path(tmp) / str(side)
            folder.mkdir()
            for path in originals:
                Image.open(path).resize((side, side), Image.Resampling.BICUBIC).save(folder / path.name, quality=95)
            paths = sorted(folder.glob("*.jpg"))
            list(iter_detections(paths[:1], detector, batch_size=1))  # warm-up at this size
            started = time.perf_counter()
            found = sum(len(r.table) for r in iter_detections(paths, detector, batch_size=1))
            whole = (time.perf_counter() - started) / len(paths)
            images = [read_image(p) for p in paths]
            started = time.perf_counter()
            for image in images:
                find_host(image)
            host = (time.perf_counter() - started) / len(paths)
            rows.append(f"| {side} | {len(paths)} | {whole * 1000:.0f} | {host * 1000:.0f} | {found} |")
            print(rows[-1], flush=True)
    load_after = "/".join(f"{x:.1f}" for x in os.getloadavg())
    text = "\n".join(
        [
            "# Cost against image size",
            "",
            f"CPU: {platform.machine()}, {os.cpu_count()} cores (shared: load average {load_before} before, "
            f"{load_after} after), one torch thread, torch {torch.__version__}. Made by "
            f"`python benchmarks/image_size.py --sizes {args.sizes} --n {args.n}`; GPU: not measured.",
            "",
            "| side (px) | images | ms per image (iter_detections, batch 1) | of which host step alone (ms) | boxes |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
