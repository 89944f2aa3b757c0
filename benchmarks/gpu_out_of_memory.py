"""Real CUDA out-of-memory: does training go on with fewer images at a time, and does detection?

usage: python benchmarks/gpu_out_of_memory.py [--cap-gb 1.5] [--tiny-cap-gb 0.05] [--batch 16]
       [--out docs/benchmarks/gpu_out_of_memory.md]

Needs a CUDA GPU (the tests inject the error on the CPU: tests/test_training_faults.py). The
process's share of GPU memory is capped (``torch.cuda.set_per_process_memory_fraction``), so the
allocator fails as on a small card: one epoch of zoobot-convnext_pico (random init, every layer
trainable) on 32 simulated 400 px galaxies at ``--batch`` images a batch, then detection of the
same images 64 tiles a batch, under ``--cap-gb``; then a training under ``--tiny-cap-gb``, too
little for one image, which must stop with the one-line error. Writes what the user saw.
"""

import argparse
import logging
import time
from dataclasses import replace
from pathlib import Path

import torch

from napari_clumps.composite import lupton_composite
from napari_clumps.inference import as_galaxy_image, iter_detections
from napari_clumps.model import new_detector
from napari_clumps.simulate import SimulationSettings, simulate_galaxy
from napari_clumps.training import LabelledImage, TrainingError, TrainingOptions, train


def items(n=32):
    settings = SimulationSettings(size=400)
    out = []
    for i in range(n):
        galaxy = simulate_galaxy(5, i, settings)
        image = as_galaxy_image(lupton_composite(galaxy.bands, ("g", "r", "i")), name=f"g{i}")
        out.append(LabelledImage(image, galaxy.truth_boxes(), galaxy.truth_labels(), f"g{i}"))
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cap-gb", type=float, default=1.5)
    parser.add_argument("--tiny-cap-gb", type=float, default=0.05)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", default=Path(__file__).resolve().parents[1] / "docs/benchmarks/gpu_out_of_memory.md")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_out_of_memory.py needs a CUDA GPU")
    total = torch.cuda.get_device_properties(0).total_memory
    data, lines = items(), []
    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("napari_clumps").addHandler(handler)

    def capped(gb):
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(gb * 2**30 / total, 1.0))
        torch.cuda.reset_peak_memory_stats()

    torch.manual_seed(0)
    detector = new_detector("zoobot-convnext_pico", backbone_weights=None)
    options = TrainingOptions(epochs=1, batch_size=args.batch, trainable_blocks=None, val_fraction=0, device="cuda")
    notes, losses = [], []

    def callback(progress):
        (notes if progress.kind == "note" else losses).append(progress.note or progress.loss)

    capped(args.cap_gb)
    start = time.perf_counter()
    try:
        tuned = train(detector, data, options, callback=callback)
        outcome = f"finished: {len(losses)} steps, last loss {losses[-1]:.3f}"
    except TrainingError as error:
        tuned, outcome = None, f"stopped: {error}"
    lines += [
        f"## Training under a {args.cap_gb:g} GB cap, batch {args.batch}",
        "",
        f"- {outcome} in {time.perf_counter() - start:.1f} s; peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GB",
        *(f"- note: {note}" for note in notes),
        "",
    ]
    if tuned is not None:
        tuned.provenance = {"model_id": "capped"}  # run its (noise) boxes as a trained model's
        warnings.clear()
        capped(args.cap_gb)
        results = list(iter_detections([it.image for it in data], tuned, device="cuda", batch_size=64))
        lines += [
            f"## Detection under a {args.cap_gb:g} GB cap, 64 tiles a batch",
            "",
            f"- {len(results)} images, {sum(len(r.table) for r in results)} boxes",
            *(f"- log: {w}" for w in warnings),
            "",
        ]
    capped(args.tiny_cap_gb)
    try:
        train(detector, data[:4], replace(options, batch_size=2))
        outcome = "finished (the cap was not too small)"
    except TrainingError as error:
        outcome = f"error: {error}"
    lines += [f"## Training under a {args.tiny_cap_gb:g} GB cap", "", f"- {outcome}", ""]
    device = torch.cuda.get_device_name(0)
    text = f"# CUDA out of memory ({device}, torch {torch.__version__})\n\n" + "\n".join(lines)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
