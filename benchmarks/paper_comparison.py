"""Our default configuration vs the paper's setup, trained and tested on the same simulated data.

Both detectors are trained from random initialisation (no pretrained weights can be downloaded
here) with identical data, epochs and options through ``napari-clumps train``, then run on the
same held-out simulated galaxies and scored with ``napari-clumps evaluate``. The paper's setup
(fasterrcnn_resnet50_fpn, inputs resized to 800 px) costs ~8 s per training image on 2 CPU
cores, which is what limits the data and epochs used here.

Training runs in stages of a few epochs, each starting from the previous stage's model file
(the learning-rate schedule restarts each stage); both detectors go through identical stages. A
stage whose training time is recorded in timings.json is skipped, so the paper's slow training
can be spread over several sessions: rerun the same command. Writes docs/benchmarks/paper_comparison.md with
whatever has finished.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "napari_clumps.cli"]
MODELS = {"ours (zoobot-convnext_pico)": "zoobot-convnext_pico", "paper (fasterrcnn_resnet50_fpn, 800 px)": "paper-resnet50-fpn"}


def run(args, log):
    print("$", " ".join(map(str, args)), flush=True)
    started = time.perf_counter()
    with open(log, "a") as out:
        subprocess.run(list(map(str, args)), check=True, stdout=out, stderr=subprocess.STDOUT)
    return time.perf_counter() - started


def best_row(metrics: dict) -> dict:
    return max(metrics["by_threshold"], key=lambda row: (row["f1"], row["threshold"]))


def train_minutes(timings: dict, name: str) -> float:
    return sum(v for k, v in timings.items() if k.startswith(f"{name}.stage") and k.endswith(".train_s")) / 60


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "paper_comparison")
    parser.add_argument("--n-train", type=int, default=150, help="training galaxies (FITS + JPEG each)")
    parser.add_argument("--n-test", type=int, default=50, help="held-out galaxies (FITS + JPEG each)")
    parser.add_argument("--stages", type=int, default=4, help="training stages")
    parser.add_argument("--epochs-per-stage", type=int, default=1)
    parser.add_argument("--max-stages", type=int, default=None,
                        help="stop after this many stages in this run (resume later)")
    parser.add_argument("--only", choices=sorted(set(MODELS.values())), help="train/evaluate one model only")
    parser.add_argument("--table", type=Path, default=ROOT / "docs" / "benchmarks" / "paper_comparison.md")
    args = parser.parse_args(argv)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    train_dir, test_dir = work / "train", work / "test"
    simulated_at = work / "simulated_at_commit.txt"  # the simulator changes; the data must not
    if not (train_dir / "truth.csv").exists():
        run(CLI + ["simulate", train_dir, "--n", args.n_train, "--seed", 1000], log)
        run(CLI + ["simulate", test_dir, "--n", args.n_test, "--seed", 424242], log)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        simulated_at.write_text(commit.stdout.strip() or "unknown")

    timings_file = work / "timings.json"

    def timings() -> dict:
        return json.loads(timings_file.read_text()) if timings_file.exists() else {}

    def record(key, seconds):  # re-read first: the two detectors may be trained by two processes
        timings_file.write_text(json.dumps({**timings(), key: seconds}, indent=1))

    for name in MODELS.values():
        if args.only and name != args.only:
            continue
        base, stages_run = name, 0
        for stage in range(1, args.stages + 1):
            model_file = work / f"{name}.stage{stage}.safetensors"
            # a stage is done when its time is recorded: the trainer writes the file after every
            # epoch, so an interrupted stage leaves a file too
            if f"{name}.stage{stage}.train_s" not in timings():
                if args.max_stages is not None and stages_run >= args.max_stages:
                    break
                record(f"{name}.stage{stage}.train_s", run(CLI + [
                    "train", "--images", train_dir, "--labels", train_dir / "truth.csv", "--out", model_file,
                    "--model", base, "--backbone-weights", "none", "--trainable-blocks", -1,
                    "--epochs", args.epochs_per_stage, "--lr", 5e-4, "--val-fraction", 0, "--seed", stage], log))
                record(f"{name}.threads", os.environ.get("OMP_NUM_THREADS", "all"))
                stages_run += 1
            base = model_file
        detections = work / f"{name}.detections.csv"
        if f"{name}.stage{args.stages}.train_s" not in timings():
            print(f"{name}: stage {stage} of {args.stages} not trained yet; rerun to go on")
            continue
        if not detections.exists():
            record(f"{name}.detect_s", run(CLI + [
                "detect", test_dir, "--model", model_file, "--out", detections, "--score-threshold", 0.05], log))
        run(CLI + ["evaluate", "--truth", test_dir / "truth.csv", "--detections", detections], log)

    recorded, rows = timings(), []
    for label, name in MODELS.items():
        metrics_file = work / f"{name}.detections.metrics.json"
        if not metrics_file.exists():
            done = sum(f"{name}.stage{k}.train_s" in recorded for k in range(1, args.stages + 1))
            rows.append(f"| {label} | not finished: {done} of {args.stages} stages trained; rerun to resume |"
                        " | | | | | | | |")
            continue
        metrics = json.loads(metrics_file.read_text())
        best = best_row(metrics)
        n_test_images = 2 * args.n_test
        rows.append(
            f"| {label} | {best['threshold']:.2f} | {best['completeness']:.3f} | {best['purity']:.3f} | "
            f"{best['f1']:.3f} | {metrics['coco']['ap50']:.3f} | {train_minutes(recorded, name):.0f} | "
            f"{1000 * recorded.get(f'{name}.detect_s', float('nan')) / n_test_images:.0f} | "
            f"{recorded.get(f'{name}.threads', '?')} |")
    args.table.write_text(
        "# Our default configuration vs the paper's setup\n\n"
        f"Written by `benchmarks/paper_comparison.py`. Both detectors trained from random initialisation on "
        f"the same {args.n_train} simulated galaxies (simulator of commit "
        f"{simulated_at.read_text().strip() if simulated_at.exists() else 'unknown'}, seed 1000, FITS + JPEG = {2 * args.n_train} images) in "
        f"{args.stages} stages of {args.epochs_per_stage} epochs (one-cycle lr 5e-4 restarted each stage), "
        f"batch 4, all layers trainable, no validation split; tested on "
        f"{args.n_test} held-out galaxies (seed 424242, {2 * args.n_test} images), IoU >= 0.3 matching. "
        "Completeness/purity/F1 at each model's best-F1 threshold on the test set (the same "
        "optimistic choice for both); AP50 needs no threshold. "
        "Detection time includes model loading and image reading.\n\n"
        "| detector | threshold | completeness | purity | F1 | AP50 | train min | detect ms/image | CPU threads |\n"
        "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    print(args.table.read_text())


if __name__ == "__main__":
    main()
