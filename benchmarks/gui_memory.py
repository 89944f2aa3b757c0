"""What the garbage collector's freezing during runs costs in memory: the reference cycles that die
between a run's start and the next layer removal (docs/reliability.md, "Still weak: GUI").

usage: xvfb-run -a -s "-screen 0 1400x900x24" python benchmarks/gui_memory.py [--n 8] [--runs 10]
       [--label NAME] [--out docs/benchmarks/gui_memory.md]

A napari viewer (not shown: this measures memory, not drawing) with ``--n`` simulated FITS
galaxies and the Detect widget; Detect on every image ``--runs`` times (the first makes the clumps
layers, the next refill them). After each run: the process's resident memory (``/proc``), the
objects the collector skips (``gc.get_freeze_count()``). Then the frozen objects are made
collectable again and collected, as removing a layer does (``_background.collect_removed_layers``):
the unreachable objects found and the memory given back are what the frozen cycles held.
"""

import argparse
import gc
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gui_responsiveness import galaxies_in_a_viewer, wait_until  # noqa: E402
from report import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def resident_mib(pid="self") -> float:
    """A process's resident memory; 0 for none (no detection process yet)."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def detection_process_pid():
    """The pid of the session's detection process (napari_clumps.model_process), if started."""
    from napari_clumps import model_process

    shared = model_process._shared.get("detect")
    return shared.pid if shared is not None and shared.is_alive() else None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--label", default="current")
    parser.add_argument("--out", default=ROOT / "docs/benchmarks/gui_memory.md")
    args = parser.parse_args()
    from napari_clumps._detect_widget import DetectionWidget

    viewer, _, _ = galaxies_in_a_viewer(args.n, "gui_memory", show=False)
    detect = DetectionWidget(viewer)
    viewer.window.add_dock_widget(detect, name="Detect clumps")
    rows = []

    def note(what):
        frozen = gc.get_freeze_count()
        rows.append((what, resident_mib(), resident_mib(detection_process_pid()), frozen))
        print(f"{what}: {rows[-1][1]:.0f} MiB (detection process {rows[-1][2]:.0f} MiB), {frozen} frozen", flush=True)

    note("before any run")
    for run in range(1, args.runs + 1):
        detect.run()
        wait_until(lambda: detect.run_button.enabled)
        wait_until(lambda: not detect._inbox._items)
        note(f"after Detect {run}")
    # what the frozen cycles hold: the garbage a full collection finds once they are looked at again
    unfrozen_garbage = gc.collect()  # first what the collector sees anyway (nothing frozen)
    before = resident_mib()
    gc.unfreeze()  # what removing a layer does (_background.collect_removed_layers), then napari collects
    frozen_garbage = gc.collect()
    note("unfrozen and collected (as at a layer's removal)")
    freed = before - rows[-1][1]
    viewer.close()

    lines = [
        f"{args.n} simulated galaxies, {args.runs} Detect runs, packaged model, viewer not shown. Made by "
        f"`python benchmarks/gui_memory.py --n {args.n} --runs {args.runs}`. Resident memory from /proc; "
        "frozen: the objects the collector skips (gc.get_freeze_count()), in the GUI process. Detect runs the "
        "model in a process of its own (napari_clumps.model_process), whose memory is its own column.",
        "",
        "| after | resident memory (MiB) | detection process (MiB) | objects frozen |",
        "|---|---|---|---|",
        *(f"| {what} | {mib:.0f} | {child:.0f} | {frozen} |" for what, mib, child, frozen in rows),
        "",
        f"A full collection before unfreezing found {unfrozen_garbage} unreachable objects; after, "
        f"{frozen_garbage} (what the frozen reference cycles were), and resident memory fell by {freed:.0f} MiB "
        "(memory freed inside Python's allocator is not always given back to the system).",
    ]
    write_section(
        args.out,
        args.label,
        f"### {args.label}\n\n" + "\n".join(lines),
        title="# Memory held by the collector's freezing during GUI runs\n\nMade by `benchmarks/gui_memory.py` "
        "(its docstring says what is measured); why the collector is frozen: docs/reliability.md.",
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
