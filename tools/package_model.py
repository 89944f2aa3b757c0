"""Package a trained model as the default: float16 weights, a calibrated threshold, held-out scores.

usage: python tools/package_model.py TRAINED.safetensors OUT.safetensors --calibration CAL_DIR --test TEST_DIR

1. the score threshold is chosen on CAL_DIR (a simulated set never trained on) by --rule:
   "balanced" (default) maximises min(completeness, purity), the rule that fits a target on both;
   "best-f1" maximises F1, which is flat over a wide range of thresholds and so picks among them
   almost at random;
2. `napari-clumps detect` + `evaluate` on TEST_DIR (another unseen seed) at that threshold;
both numbers go into the model's provenance.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from napari_clumps.model import load_model, save_model

COMMAND = "tools/train_default_model.sh"
# threshold rules: the calibration row (threshold, completeness, purity, f1) with the largest key
RULES = {
    "balanced": lambda row: (min(row["completeness"], row["purity"]), row["f1"]),
    "best-f1": lambda row: row["f1"],
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("trained")
    parser.add_argument("out")
    parser.add_argument("--calibration", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--model-id", required=True)
    parser.add_argument("--data", required=True, help="how the training data was made")
    parser.add_argument("--rule", choices=sorted(RULES), default="balanced", help="threshold rule on CAL_DIR")
    args = parser.parse_args()
    detector = load_model(args.trained)
    history = detector.provenance.get("history", [])
    detector.provenance.update(
        {
            "model_id": args.model_id,
            "command": COMMAND,
            "data": args.data,
            "trained_from": "random initialisation (no pretrained weights reachable offline)",
            "history": history,
        }
    )
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        tmp_model = Path(tmp) / "model.safetensors"
        save_model(detector, tmp_model, half=True)

        def detect_and_evaluate(folder, name, threshold):
            detections = Path(tmp) / f"{name}.csv"
            subprocess.run(
                [
                    bin_dir / "napari-clumps",
                    "detect",
                    folder,
                    "--model",
                    tmp_model,
                    "--out",
                    detections,
                    "--score-threshold",
                    "0.05",
                ],
                check=True,
            )
            subprocess.run(
                [
                    bin_dir / "napari-clumps",
                    "evaluate",
                    "--truth",
                    Path(folder) / "truth.csv",
                    "--detections",
                    detections,
                    "--score-threshold",
                    str(threshold),
                ],
                check=True,
            )
            return json.loads(Path(tmp, f"{name}.metrics.json").read_text())

        calibration = detect_and_evaluate(args.calibration, "calibration", 0.5)
        best = max(calibration["by_threshold"], key=RULES[args.rule])
        threshold = round(best["threshold"], 2)
        metrics = detect_and_evaluate(args.test, "test", threshold)
    detector.provenance["score_threshold"] = threshold
    detector.provenance["threshold_calibration"] = {
        "set": f"{args.calibration} (napari-clumps simulate --n 100 --seed 5000)",
        "rule": args.rule,
        **{k: best[k] for k in ("completeness", "purity", "f1")},
    }
    detector.provenance["test_metrics"] = {
        "test_set": f"{args.test} (napari-clumps simulate --n 200 --seed 424242)",
        "score_threshold": threshold,
        **metrics["at_threshold"],
        "coco": metrics["coco"],
    }
    save_model(detector, args.out, half=True)
    print(f"packaged {args.out} ({Path(args.out).stat().st_size / 1e6:.1f} MB)")
    print(
        json.dumps(
            {k: detector.provenance[k] for k in ("score_threshold", "threshold_calibration", "test_metrics")}, indent=2
        )
    )


if __name__ == "__main__":
    main()
