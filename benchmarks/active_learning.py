"""Active learning benchmark: does fine-tuning on the first N galaxies of the active review order
beat fine-tuning on N random ones?

usage: python benchmarks/active_learning.py [--parts real,sim] [--draws 3] [--force]

Protocol (docs/active-learning.md discusses the result):

* Start from the packaged default model. Rank a pool of labelled galaxies with
  ``napari_clumps.active.rank_for_review`` and that model (strategies ``combined``,
  ``uncertainty``, ``disagreement``), take the first N (N = 5, 10), fine-tune with the library's
  defaults (real_data.py's learning curve: 10 epochs, no validation split, CPU, seed = fold), and
  score the test galaxies. The baseline: the first N of the ``random`` strategy, one run per seed
  (``--draws``). Every run of a fold has the same training seed, so runs differ only in the
  galaxies they were given.
* ``real``: the 37 SDSS Stripe 82 galaxies with catalogued clumps (../shared/data/real_clumps_gzh_s82),
  the two folds of real_data.py's learning curve (each half once the pool, the other the test
  set); clump class on the host, centre matching; F1 at the best threshold and at the fine-tuned
  model's own threshold.
* ``sim``: a pool of 60 simulated galaxies (seed 6000, FITS) and a test set of 100 (the first 100
  of real_data.py's simulated test set, seed 424242, FITS); all classes on the host, IoU >= 0.3.

Each finished run is stored at once in docs/benchmarks/active_learning.json and skipped on a
rerun (unless --force), so a killed run continues where it stopped; the table
docs/benchmarks/active_learning.md and the plot docs/images/active_learning.png are rewritten
from the JSON. The combined strategy and the random draws run first, then the single criteria.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from real_data import (
    BUILD,
    CENTRE,
    DEV,
    IOU,
    LEARNING_EPOCHS,
    ROOT,
    SIM_SEED,
    _cell,
    detect_all,
    dev_set,
    learning_folds,
    scores,
)

RESULTS = ROOT / "docs" / "benchmarks" / "active_learning.json"
TABLE = ROOT / "docs" / "benchmarks" / "active_learning.md"
PLOT = ROOT / "docs" / "images" / "active_learning.png"
#: Galaxies fine-tuned on: what a person reviews in a sitting.
NS = (5, 10)
RANDOM_DRAWS = 3
#: Simulated pool: a seed the packaged model never saw (tools/train_default_model.sh uses 1000,
#: 5000 and the test seed).
SIM_POOL_SEED, SIM_POOL_N = 6000, 60
SIM_TEST_N = 100
BASE = "packaged model, not fine-tuned"
#: Least F1 range on the plot's axes: about twice the real dev set's F1 noise (+-0.07 with 19 test
#: galaxies), so that the eye does not read differences within it as effects.
MIN_F1_SPAN = 0.15


@dataclass
class Fold:
    """A pool to pick training galaxies from (with its labels CSV) and a test set."""

    part: str
    index: int
    pool: list[Path]
    pool_labels: Path
    test: list[Path]
    test_truth: pd.DataFrame
    rule: dict
    label: str | None  # the class scored; None: all classes


def real_folds() -> list[Fold]:
    paths, truth, _ = dev_set()
    return [
        Fold("real", i, [paths[j] for j in pool], DEV / "labels.csv", [paths[j] for j in test], truth, CENTRE, "clump")
        for i, (pool, test) in enumerate(learning_folds(len(paths)))
    ]


def sim_folds() -> list[Fold]:
    from napari_clumps.detections import read_detections
    from napari_clumps.simulate import write_dataset

    folders = {}
    for key, seed, n in (("pool", SIM_POOL_SEED, SIM_POOL_N), ("test", SIM_SEED, SIM_TEST_N)):
        folders[key] = BUILD / f"sim_{seed}_{n}"
        if not (folders[key] / "truth.csv").exists():
            write_dataset(folders[key], n=n, seed=seed)
    return [
        Fold(
            "sim",
            0,
            sorted(folders["pool"].glob("*.fits")),
            folders["pool"] / "truth.csv",
            sorted(folders["test"].glob("*.fits")),
            read_detections(folders["test"] / "truth.csv"),
            IOU,
            None,
        )
    ]


PARTS = {"real": real_folds, "sim": sim_folds}


def run_key(fold: Fold, n: int, strategy: str, draw: int | None) -> str:
    return f"{fold.part}/fold {fold.index}/N {n}/{strategy}" + ("" if draw is None else f"/seed {draw}")


def plan(draws: int):
    """(strategy, seed) in the order they run: the default strategy and its baseline first."""
    from napari_clumps.active import DEFAULT_STRATEGY, STRATEGIES

    singles = [s for s in STRATEGIES if s not in (DEFAULT_STRATEGY, "random")]
    return [(DEFAULT_STRATEGY, None)] + [("random", d) for d in range(draws)] + [(s, None) for s in singles]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="real,sim", help="comma-separated: real, sim")
    parser.add_argument("--draws", type=int, default=RANDOM_DRAWS, help="random draws per fold and N")
    parser.add_argument("--force", action="store_true", help="rerun runs already in the results")
    args = parser.parse_args()
    import torch

    from napari_clumps.active import rank_for_review
    from napari_clumps.io import read_image
    from napari_clumps.model import get_detector
    from napari_clumps.training import TrainingOptions, load_labelled_images, train

    torch.set_num_threads(2)
    base = get_detector("default", "cpu")
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() and not args.force else {}
    results.update(model_id=base.model_id, epochs=LEARNING_EPOCHS, ns=list(NS))
    runs, rankings = results.setdefault("runs", {}), results.setdefault("rankings", {})
    folds = [fold for part in args.parts.split(",") for fold in PARTS[part]()]
    test_images = {}

    def save():
        RESULTS.write_text(json.dumps(results, indent=1))

    def score(detector, fold):
        if fold.test[0] not in test_images:
            test_images.update({p: read_image(p) for p in fold.test})
        names = [p.name for p in fold.test]
        found = detect_all(detector, [test_images[p] for p in fold.test], names)
        return scores(fold.test_truth, found, names, detector.score_threshold, fold.rule, fold.label, on_host=True)

    for fold in folds:
        key = run_key(fold, 0, BASE, None)
        if key not in runs:
            runs[key] = {"part": fold.part, "fold": fold.index, "n": 0, "strategy": BASE, **score(base, fold)}
            save()
    for strategy, draw in plan(args.draws):
        for fold in folds:
            ranking_key = f"{fold.part}/fold {fold.index}/{strategy}" + ("" if draw is None else f"/seed {draw}")
            if ranking_key not in rankings:
                ranked = rank_for_review(
                    fold.pool, base, names=[p.name for p in fold.pool], strategy=strategy, seed=draw or 0, device="cpu"
                )
                rankings[ranking_key] = ranked[["image", "priority", "reason"]].round(4).to_dict(orient="records")
                save()
            order = [row["image"] for row in rankings[ranking_key]]
            by_name = {p.name: p for p in fold.pool}
            for n in NS:
                key = run_key(fold, n, strategy, draw)
                if key in runs:
                    continue
                items, _ = load_labelled_images(
                    [by_name[name] for name in order[:n]], fold.pool_labels, strict_names=False
                )
                start = time.perf_counter()
                tuned = train(
                    base,
                    items,
                    TrainingOptions(epochs=LEARNING_EPOCHS, val_fraction=0.0, device="cpu", seed=fold.index),
                )
                seconds = time.perf_counter() - start
                runs[key] = {
                    "part": fold.part,
                    "fold": fold.index,
                    "n": n,
                    "strategy": strategy,
                    "seed": draw,
                    "images": order[:n],
                    "n_truth_boxes": int(sum(len(item.boxes) for item in items)),
                    "seconds": round(seconds, 1),
                    **score(tuned, fold),
                }
                save()
                print(f"{key}: best F1 {runs[key]['best']['f1']:.3f} ({seconds:.0f} s training)", file=sys.stderr)
    write_table(results)
    plot(results)


def runs_frame(results: dict) -> pd.DataFrame:
    """One row per run: part, fold, n, strategy, seed, F1 best / at the model's threshold."""
    return pd.DataFrame(
        [
            {
                "part": r["part"],
                "fold": r["fold"],
                "n": r["n"],
                "strategy": r["strategy"],
                "seed": r.get("seed"),
                "best": r["best"]["f1"],
                "own": r["default"]["f1"],
                "n_truth_boxes": r.get("n_truth_boxes"),
                "seconds": r.get("seconds"),
                "run": r,
            }
            for r in results["runs"].values()
        ]
    )


def _spread(values, digits: int = 2) -> str:
    """Mean (min-max)."""
    values = np.asarray(values, float)
    return f"{values.mean():.{digits + 1}f} ({values.min():.{digits}f}-{values.max():.{digits}f})"


PART_TITLES = {
    "real": "Real dev set: 37 SDSS Stripe 82 galaxies, clump class on the host, centre matching",
    "sim": f"Simulated: pool of {SIM_POOL_N} (seed {SIM_POOL_SEED}), test {SIM_TEST_N} (seed {SIM_SEED}), "
    "all classes on the host, IoU >= 0.3",
}


def write_table(results: dict) -> None:
    frame = runs_frame(results)
    lines = [
        "# Active learning benchmark",
        "",
        "Written by `python benchmarks/active_learning.py` (its docstring has the protocol; "
        "[../active-learning.md](../active-learning.md) the reading). Base model "
        f"{results['model_id']}, fine-tuned {results['epochs']} epochs on the first N galaxies of each order.",
        "Cells: completeness / purity / **F1** @ score threshold; random: mean F1 (min-max) over the draws.",
        "",
    ]
    for part, by_part in frame.groupby("part", sort=False):
        lines += [f"## {PART_TITLES[part]}", "", "| fold | N | order | N's truth boxes | best | model's threshold |"]
        lines += ["|---|---|---|---|---|---|"]
        for (fold, n), group in by_part.groupby(["fold", "n"]):
            for strategy, runs in group.groupby("strategy", sort=False):
                if strategy == "random":
                    lines.append(
                        f"| {fold} | {n} | random ({len(runs)} draws) | {_spread(runs.n_truth_boxes, 0)} | "
                        f"F1 {_spread(runs.best)} | F1 {_spread(runs.own)} |"
                    )
                else:
                    r = runs.iloc[0].run
                    boxes = "" if n == 0 else r.get("n_truth_boxes", "")
                    lines.append(
                        f"| {fold} | {n} | {strategy} | {boxes} | {_cell(r['best'])} | {_cell(r['default'])} |"
                    )
        lines += ["", *summary_lines(by_part), ""]
    TABLE.write_text("\n".join(lines))


def summary(by_part: pd.DataFrame) -> pd.DataFrame:
    """Per N and strategy: F1 averaged over the folds (random: each draw's fold mean, then the
    mean and range over draws)."""
    rows = []
    tuned = by_part[by_part.n > 0]
    for (n, strategy), group in tuned.groupby(["n", "strategy"], sort=False):
        per_draw = group.groupby(group.seed.fillna(-1))[["best", "own"]].mean()
        rows.append(
            {
                "n": n,
                "strategy": strategy,
                "folds": group.fold.nunique(),
                **{f"{k}_mean": per_draw[k].mean() for k in ("best", "own")},
                **{f"{k}_min": per_draw[k].min() for k in ("best", "own")},
                **{f"{k}_max": per_draw[k].max() for k in ("best", "own")},
            }
        )
    return pd.DataFrame(rows)


def summary_lines(by_part: pd.DataFrame) -> list[str]:
    table = summary(by_part)
    if table.empty:
        return []
    lines = [
        "Mean over the folds (random: mean and range of the draws' fold means); difference to the random mean:",
        "",
        "| N | order | best F1 | vs random | F1 at model's threshold | vs random |",
        "|---|---|---|---|---|---|",
    ]
    for n, group in table.groupby("n"):
        random = group[group.strategy == "random"]
        for row in group.itertuples():
            cells = []
            for k in ("best", "own"):
                mean = getattr(row, f"{k}_mean")
                if row.strategy == "random":
                    cells += [f"{mean:.3f} ({getattr(row, f'{k}_min'):.2f}-{getattr(row, f'{k}_max'):.2f})", ""]
                else:
                    versus = f"{mean - random[f'{k}_mean'].iloc[0]:+.3f}" if len(random) else ""
                    cells += [f"{mean:.3f}", versus]
            lines.append(f"| {n} | {row.strategy} | " + " | ".join(cells) + " |")
    return lines + ["", *wins_lines(by_part)]


def wins_lines(by_part: pd.DataFrame) -> list[str]:
    """Per strategy, in how many (fold, N) cells it beats the random mean, and how many random
    draws it beats in all: the count behind the means."""
    tuned = by_part[by_part.n > 0]
    random = tuned[tuned.strategy == "random"].groupby(["fold", "n"])
    lines = []
    for strategy, runs in tuned[tuned.strategy != "random"].groupby("strategy", sort=False):
        for k, what in (("best", "best F1"), ("own", "F1 at the model's threshold")):
            cells = draws = beaten_cells = beaten_draws = 0
            for run in runs.itertuples():
                if (run.fold, run.n) not in random.groups:
                    continue
                others = random.get_group((run.fold, run.n))[k]
                cells += 1
                beaten_cells += getattr(run, k) > others.mean()
                draws += len(others)
                beaten_draws += int((getattr(run, k) > others).sum())
            if cells:
                lines.append(
                    f"- {strategy}, {what}: above the random mean in {beaten_cells} of {cells} (fold, N) cells, "
                    f"above {beaten_draws} of {draws} random draws"
                )
    return lines


def plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = runs_frame(results)
    parts = list(dict.fromkeys(frame.part))
    fig, axes = plt.subplots(2, len(parts), figsize=(4.6 * len(parts), 6.4), dpi=110, squeeze=False)
    styles = {"combined": ("C0", "o-"), "uncertainty": ("C2", "s--"), "disagreement": ("C3", "^--")}
    for column, part in enumerate(parts):
        by_part = frame[frame.part == part]
        table = summary(by_part)
        base = by_part[by_part.n == 0].groupby("fold")[["best", "own"]].mean().mean()
        for row, (k, what) in enumerate((("best", "best threshold"), ("own", "fine-tuned model's threshold"))):
            ax = axes[row, column]
            random = table[table.strategy == "random"].sort_values("n")
            if len(random):
                ns = [0, *random.n]
                ax.fill_between(
                    ns, [base[k], *random[f"{k}_min"]], [base[k], *random[f"{k}_max"]], color="grey", alpha=0.25
                )
                ax.plot(ns, [base[k], *random[f"{k}_mean"]], "k:", lw=2, label="random N: mean, range of draws")
            for strategy, (colour, style) in styles.items():
                mine = table[table.strategy == strategy].sort_values("n")
                if len(mine):
                    ax.plot(
                        [0, *mine.n], [base[k], *mine[f"{k}_mean"]], style, color=colour, label=f"first N: {strategy}"
                    )
            # at least MIN_F1_SPAN of F1 on the axis, so that differences within the noise look small
            low, high = ax.get_ylim()
            middle, half = (low + high) / 2, max(high - low, MIN_F1_SPAN) / 2
            ax.set_ylim(middle - half, middle + half)
            ax.set_xticks([0, *results["ns"]])
            ax.grid(alpha=0.3)
            ax.set_title(f"{part}: F1 at the {what}", fontsize=9)
            if row == 1:
                ax.set_xlabel("galaxies fine-tuned on (N)")
            if column == 0:
                ax.set_ylabel("F1 on the test galaxies")
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Fine-tuning on the first N of the active order vs N random galaxies (mean over folds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(PLOT)


if __name__ == "__main__":
    main()
