"""Package a model whose score threshold is calibrated on the real dev set (default-v5 onwards).

usage: python tools/package_real_model.py TRAINED.safetensors OUT.safetensors --model-id ID --data "..."

The threshold is the one with the best F1 for the ``clump`` class, detections on the host, on
the 37 real dev galaxies (../shared/data/real_clumps_gzh_s82, centre rule), among the thresholds
that keep false detections on real clump-free galaxies within budget (at most 0.1 clump and 0.2
odd-clump detections per image on the host) on a *calibration* sample of 200 GZ1 ellipticals,
disjoint from the benchmark's test sample and from the training set. Choosing on the dev set is a
validation use its README allows; because it flatters the dev figure at that threshold, the script
also says how much: a two-fold estimate that picks the threshold on one half of the galaxies and
scores it on the other. All of it goes into the model's provenance, with float16 weights.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import real_data  # noqa: E402

from napari_clumps.host import on_host_rows  # noqa: E402
from napari_clumps.metrics import scores_table  # noqa: E402
from napari_clumps.model import load_model, save_model  # noqa: E402

#: False detections allowed per real clump-free galaxy (on the host), by class (issue 11's targets).
BUDGET = {"clump": 0.1, "odd_clump": 0.2}


def best_row(truth, found, names, thresholds):
    table = scores_table(truth, found, thresholds=thresholds, images=names, rule="centre")
    return table.loc[table.f1.fillna(-1).idxmax()]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("trained")
    parser.add_argument("out")
    parser.add_argument("--model-id", required=True)
    parser.add_argument("--data", required=True, help="how the training data was made")
    args = parser.parse_args()
    detector = load_model(args.trained)
    paths, truth, _ = real_data.dev_set()
    names = [p.name for p in paths]
    found = on_host_rows(real_data.detect_all(detector, paths, names))
    found = found[found.label == "clump"]
    calibration = real_data.elliptical_sample(random_state=1, exclude=real_data.elliptical_sample())
    clump_free = real_data.detect_all(detector, [real_data.ELLIPTICALS / n for n in calibration], calibration)
    rates = real_data.per_image_by_threshold(clump_free, len(calibration))
    within = rates[(rates.clump <= BUDGET["clump"]) & (rates.odd_clump <= BUDGET["odd_clump"])]
    if within.empty:
        raise SystemExit(f"no threshold keeps the clump-free galaxies within {BUDGET}:\n{rates}")
    thresholds = list(within.threshold)
    best = best_row(truth, found, names, thresholds)
    order = np.random.default_rng(0).permutation(len(names))
    halves = [[names[i] for i in order[: len(order) // 2]], [names[i] for i in order[len(order) // 2 :]]]
    folds = []
    for pick, score in ((0, 1), (1, 0)):
        chosen = best_row(truth, found, halves[pick], thresholds).threshold
        row = scores_table(truth, found, thresholds=[chosen], images=halves[score], rule="centre").iloc[0]
        best_there = best_row(truth, found, halves[score], thresholds)
        folds.append(
            {"threshold": float(chosen), "f1": round(float(row.f1), 4), "best_f1_there": round(float(best_there.f1), 4)}
        )
    detector.provenance.update(
        {
            "model_id": args.model_id,
            "command": "tools/train_default_model.sh",
            "data": args.data,
            "score_threshold": float(best.threshold),
            "threshold_calibration": {
                "set": "real dev set: 37 SDSS Stripe 82 galaxies, 213 catalogued clumps (Mehta et al. 2021)",
                "rule": "best F1, clump class, detections on the host, centre matching, among thresholds keeping "
                f"on-host detections per clump-free galaxy within {BUDGET}",
                "clump_free_calibration": f"{len(calibration)} GZ1 ellipticals (benchmarks/real_data.py "
                "elliptical_sample(random_state=1)), per image at the threshold: "
                + json.dumps(rates[rates.threshold == best.threshold].iloc[0].to_dict()),
                **{k: round(float(best[k]), 4) for k in ("completeness", "purity", "f1")},
                "two_fold_check": folds,
            },
        }
    )
    save_model(detector, args.out, half=True)
    print(f"packaged {args.out} ({Path(args.out).stat().st_size / 1e6:.1f} MB), threshold {best.threshold:g}")
    print(json.dumps(detector.provenance["threshold_calibration"], indent=2))


if __name__ == "__main__":
    main()
