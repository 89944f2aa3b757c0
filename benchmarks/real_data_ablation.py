"""Ablation: what each training-data source adds on the real benchmark.

usage: python benchmarks/real_data_ablation.py --real build/v5/real --sim build/v5/sim [--arms A,B] [--epochs 1]

Every arm fine-tunes the packaged default model (default-v4) the same way (all layers, one-cycle
lr 1e-4, flips / rotations / 15 % scale jitter, 10 % validation for the threshold) on the same
number of images, drawn from different sources:

* ``simulated``: simulated galaxies only (more of what default-v4 was trained on: the control);
* ``injected``: real clump-free hosts with injected clumps (tools/make_real_training_set.py);
* ``injected + real negatives``: the same plus untouched real ellipticals;
* ``injected + real negatives + simulated``: the mixture first planned for default-v5;
* ``simulated + real negatives``: no injection, real ellipticals as negatives.

Each model is scored with benchmarks/real_data.py's ``dev`` and ``ellipticals`` sections; results
go to docs/benchmarks/real_data_ablation.json (a rerun skips arms that are done) and the table
docs/benchmarks/real_data_ablation.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_data  # noqa: E402  (the benchmark's sections)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "benchmarks" / "real_data_ablation.json"
TABLE = ROOT / "docs" / "benchmarks" / "real_data_ablation.md"
#: Images per arm, and each arm's share of them by source.
N_IMAGES = 480
ARMS = {
    "simulated": {"sim": 1.0},
    "injected": {"injected": 1.0},
    "injected + real negatives": {"injected": 0.7, "negative": 0.3},
    "injected + real negatives + simulated": {"injected": 0.5, "negative": 0.2, "sim": 0.3},
    "simulated + real negatives": {"sim": 0.7, "negative": 0.3},
}


def pools(real: Path, sim: Path) -> dict:
    """(folder, image name) of each source, in a fixed random order."""
    listed = pd.read_csv(real / "truth.images.csv")
    injected = listed[listed.image.str.contains("inj_")].image
    negative = listed[listed.image.str.contains("neg_")].image
    simulated = pd.Series(sorted(p.name for p in sim.iterdir() if p.suffix in (".fits", ".jpg")))
    shuffle = lambda names: list(names.sample(frac=1.0, random_state=0))  # noqa: E731
    return {
        "injected": [(real / "images", Path(n).name) for n in shuffle(injected)],
        "negative": [(real / "images", Path(n).name) for n in shuffle(negative)],
        "sim": [(sim, n) for n in shuffle(simulated)],
    }


def arm_items(arm: str, sources: dict, truth: pd.DataFrame):
    from napari_clumps.training import load_labelled_images

    chosen = []
    for source, share in ARMS[arm].items():
        chosen += sources[source][: int(round(share * N_IMAGES))]
    paths = [folder / name for folder, name in chosen]
    labels = ROOT / "build" / "ablation_labels.csv"
    labels.parent.mkdir(parents=True, exist_ok=True)
    names = {name for _, name in chosen}
    truth[truth.image.isin(names)].to_csv(labels, index=False)
    items, _ = load_labelled_images(paths, labels, strict_names=False)
    return items


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", type=Path, required=True)
    parser.add_argument("--sim", type=Path, required=True)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    from napari_clumps.model import Detector, get_detector, load_model
    from napari_clumps.training import TrainingOptions, train

    torch.set_num_threads(args.threads)
    sources = pools(args.real, args.sim)
    truth = pd.concat([pd.read_csv(args.real / "truth.csv"), pd.read_csv(args.sim / "truth.csv")])
    truth["image"] = truth.image.map(lambda n: Path(n).name)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    base_path = get_detector(None, "cpu").source
    for arm in args.arms.split(","):
        if arm in results:
            continue
        items = arm_items(arm, sources, truth)
        base = load_model(base_path)
        start = time.perf_counter()
        tuned = train(
            base,
            items,
            TrainingOptions(
                epochs=args.epochs,
                learning_rate=1e-4,
                trainable_blocks=None,
                val_fraction=0.1,
                scale_jitter=0.15,
                device="cpu",
                seed=0,
            ),
        )
        seconds = time.perf_counter() - start
        detector = Detector(tuned.network.eval(), tuned.config, tuned.provenance)
        results[arm] = {
            "n_images": len(items),
            "n_boxes": int(sum(len(i.boxes) for i in items)),
            "epochs": args.epochs,
            "training_seconds": round(seconds, 1),
            "threshold": detector.score_threshold,
            "dev": real_data.section_dev(detector)["on host"],
            "ellipticals": real_data.section_ellipticals(detector)["on host"],
            "elliptical_sample": "excludes the real-sky training set",
        }
        RESULTS.write_text(json.dumps(results, indent=1))
        print(f"{arm}: done ({seconds:.0f} s training)", file=sys.stderr)
    write_table(results)


def write_table(results: dict) -> None:
    cell = real_data._cell
    lines = [
        "# Ablation: what each training source adds (real benchmark)",
        "",
        "Written by `python benchmarks/real_data_ablation.py` (its docstring says how each arm is made).",
        f"Each arm fine-tunes default-v4 on {N_IMAGES} images for the same number of epochs; the dev set is",
        "scored on the host, centre rule; ellipticals: on-host detections per image at the arm's own",
        "threshold (best F1 on its 10 % validation split).",
        "",
        "| training data | images | boxes | dev clump: best | dev clump: own threshold | dev all classes: best "
        "| ellipticals: clump / odd per image | training s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, r in results.items():
        e = r["ellipticals"]
        mark = "" if "elliptical_sample" in r else " *"
        lines.append(
            f"| {arm} | {r['n_images']} | {r['n_boxes']} | {cell(r['dev']['clump']['best'])} | "
            f"{cell(r['dev']['clump']['default'])} | {cell(r['dev']['all classes']['best'])} | "
            f"{e['clump']:.3f} / {e['odd_clump']:.3f}{mark} | {r['training_seconds']:.0f} |"
        )
    if any("elliptical_sample" not in r for r in results.values()):
        lines += [
            "",
            "\\* measured on the first clump-free sample, which did not yet exclude the real-sky set's "
            "galaxies: up to 19 of its 200 ellipticals were among the negatives the arms with real negatives "
            "drew from, so those arms' numbers may be optimistic there.",
        ]
    lines.append("")
    TABLE.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
