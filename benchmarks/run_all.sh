#!/usr/bin/env bash
# Run every benchmark; each writes its table into docs/benchmarks/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
$PY benchmarks/anchor_coverage.py
$PY benchmarks/inference_speed.py "$@"
$PY benchmarks/default_model.py
$PY benchmarks/training_speed.py
$PY benchmarks/batch_run.py
# (benchmarks/paper_comparison.py is left out: the paper setup trains for hours on CPU; run it on its own.)
