"""Fuzzing the readers: tests/test_fuzz_readers.py under a hypothesis profile, with the cases
counted, what came of them, what failed, the time and the peak memory.

usage: python benchmarks/fuzz_readers.py [--profiles ci,long] [--seed N] [--out docs/benchmarks/fuzz_readers.md]

Each profile (tests/conftest.py) is one pytest run of the fuzz tests (``-m fuzz``) in a
subprocess: "ci" is what `make test` runs (derandomised: the same cases every time), "long"
runs 10 times as many, drawn afresh from --seed (random unless given; the page records it, and
``pytest --hypothesis-seed=N`` with HYPOTHESIS_PROFILE=long runs the same cases again). Each
profile replaces only its own section of --out (benchmarks/report.py). A failing case is a
finding, not an error of this script: the page lists it with hypothesis' way to reproduce it
(``@reproduce_failure``); the whole pytest output is kept in --logs.
"""

import argparse
import json
import os
import platform
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import write_section

ROOT = Path(__file__).resolve().parents[1]


def run_profile(profile: str, seed: int | None, log: Path) -> dict:
    """One pytest run of the fuzz tests; its counts, failures, time and peak memory."""
    with tempfile.TemporaryDirectory() as folder:
        counts = Path(folder) / "counts.json"
        env = dict(os.environ, HYPOTHESIS_PROFILE=profile, FUZZ_COUNTS_JSON=str(counts))
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
        command = [sys.executable, "-m", "pytest", "tests/test_fuzz_readers.py", "-m", "fuzz", "-p", "no:cacheprovider"]
        command += ["-q", "-rf", "--disable-warnings"] + ([f"--hypothesis-seed={seed}"] if seed is not None else [])
        load = "/".join(f"{x:.1f}" for x in os.getloadavg())
        start = time.perf_counter()
        run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        log.write_text(run.stdout + run.stderr)
        found = json.loads(counts.read_text()) if counts.exists() else {"counts": [], "slowest_s": {}}
    last = next((line for line in reversed(run.stdout.splitlines()) if " in " in line), "")
    tally = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|errors?|deselected)", last)}
    failures = re.findall(r"^FAILED (\S+)(?: - (.*))?$", run.stdout, re.M)
    reproduce = re.findall(r"@reproduce_failure\([^)]*\)", run.stdout)
    return {
        "profile": profile,
        "seed": seed,
        "status": run.returncode,
        "seconds": seconds,
        "load": load,
        # of the largest child so far: a pytest run (this script runs nothing else)
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "tests": tally,
        "failures": failures,
        "counts": found["counts"],
        "slowest_s": found["slowest_s"],
        "reproduce": reproduce,
    }


def section(result: dict) -> str:
    families = {}
    for row in result["counts"]:
        families.setdefault(row["family"], []).append((row["cases"], row["outcome"]))
    total = sum(n for rows in families.values() for n, _ in rows)
    tests = ", ".join(f"{n} {kind}" for kind, n in result["tests"].items()) or "no summary (see the log)"
    seed = "derandomised (the same cases every run)" if result["seed"] is None else f"seed {result['seed']}"
    lines = [
        f"## Profile `{result['profile']}`: {total} generated cases",
        "",
        f"`HYPOTHESIS_PROFILE={result['profile']}`, {seed}; pytest: {tests}; "
        f"{result['seconds'] / 60:.1f} min wall on {platform.machine()} ({os.cpu_count()} cores, "
        f"load before {result['load']}), peak RSS {result['peak_rss_mb']:.0f} MB. "
        "Made by `python benchmarks/fuzz_readers.py`.",
        "",
        "| family (test) | cases | slowest case | what came of them |",
        "|---|---|---|---|",
    ]
    for family, rows in sorted(families.items()):
        outcomes = "; ".join(f"{n} {outcome}" for n, outcome in sorted(rows, key=lambda row: -row[0]))
        slowest = result["slowest_s"].get(family)
        slowest = f"{slowest:.2f} s" if slowest is not None else ""
        lines.append(f"| {family} | {sum(n for n, _ in rows)} | {slowest} | {outcomes.replace('|', '/')} |")
    lines += ["", "Failures (each a finding: a case the readers did not handle as promised):", ""]
    if result["failures"]:
        lines += [f"- `{test}`: {(message or '').replace('|', '/')[:300]}" for test, message in result["failures"]]
        lines += [f"- to reproduce: `{line}`" for line in result["reproduce"]]
    elif result["status"] == 0:
        lines.append("- none")
    else:
        lines.append(f"- pytest exited with status {result['status']} without a FAILED line: see the log")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default="ci,long")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed of the long profile (default: random)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/fuzz_readers.md")
    parser.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()), help="where the pytest outputs go")
    args = parser.parse_args()
    import astropy
    import hypothesis
    import numpy
    import PIL

    versions = (
        f"Python {platform.python_version()}, astropy {astropy.__version__}, Pillow {PIL.__version__}, "
        f"numpy {numpy.__version__}, hypothesis {hypothesis.__version__}"
    )
    write_section(
        args.out,
        "fuzz_readers_about",
        "What was run: every test of `tests/test_fuzz_readers.py` (the property: a valid image or one "
        "error line naming the file, never another exception, a warning or a hang), under each "
        "hypothesis profile of `tests/conftest.py`. A case is one generated file (or set of files) "
        f"read once. {versions}.",
        title="# Fuzzing the readers",
    )
    for profile in args.profiles.split(","):
        seed = None if profile == "ci" else (args.seed if args.seed is not None else random.randrange(2**32))
        log = args.logs / f"fuzz_readers_{profile}.log"
        result = run_profile(profile, seed, log)
        text = section(result)
        write_section(args.out, f"fuzz_readers_{profile}", text)
        print(text, f"\n(pytest output: {log})\n")


if __name__ == "__main__":
    main()
