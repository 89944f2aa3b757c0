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
# the GUI one needs a display; without one, a virtual one (as `make test` runs the widget tests)
if [ -n "${DISPLAY:-}" ]; then $PY benchmarks/gui_responsiveness.py; else xvfb-run -a -s "-screen 0 1400x900x24" $PY benchmarks/gui_responsiveness.py; fi
if [ -n "${DISPLAY:-}" ]; then $PY benchmarks/gui_memory.py; else xvfb-run -a -s "-screen 0 1400x900x24" $PY benchmarks/gui_memory.py; fi
$PY benchmarks/fuzz_readers.py
# (benchmarks/paper_comparison.py is left out: the paper setup trains for hours on CPU; run it on its own.)
