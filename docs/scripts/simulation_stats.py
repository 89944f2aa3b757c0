"""Compare the simulator's truth with the real Clump Scout volunteer boxes; prints a markdown table.

usage: python docs/scripts/simulation_stats.py [--boxes ../shared/data/clumpscout_boxes.csv] [--n 300]
"""

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from napari_clumps.simulate import simulate_galaxy

ROOT = Path(__file__).resolve().parents[2]
QUANTILES = [5, 25, 50, 75, 95]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--boxes", default=ROOT.parent / "shared/data/clumpscout_boxes.csv")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    real = pd.read_csv(args.boxes)
    real_side = real.x2 - real.x1
    real_distance = np.hypot((real.x1 + real.x2) / 2 - 100, (real.y1 + real.y2) / 2 - 100)
    real_counts = real.groupby("image_id").size()

    sides, distances, counts, odd = [], [], [], []
    for index in range(args.n):
        galaxy = simulate_galaxy(args.seed, index)
        counts.append(len(galaxy.clumps))
        for clump in galaxy.clumps:
            sides.append(galaxy.box_side)
            distances.append(np.hypot(clump.x - 100, clump.y - 100))
            odd.append(clump.label == "odd_clump")
    counts = np.array(counts)
    clumpy = counts[counts > 0]

    def row(name, real_values, sim_values):
        r = " / ".join(f"{v:.1f}" for v in np.percentile(real_values, QUANTILES))
        s = " / ".join(f"{v:.1f}" for v in np.percentile(sim_values, QUANTILES))
        return f"| {name} | {r} | {s} |"

    print(
        f"Simulated: {args.n} galaxies of seed {args.seed}, {len(sides)} clumps. "
        f"Real: {len(real)} boxes on {real.image_id.nunique()} galaxies.\n"
    )
    print("| quantity (5 / 25 / 50 / 75 / 95 %) | real volunteer boxes | simulated truth |")
    print("|---|---|---|")
    print(row("box side, px (200 px frame)", real_side, sides))
    print(row("box centre distance from image centre, px", real_distance, distances))
    print(row("clumps per galaxy (galaxies with >= 1)", real_counts, clumpy))
    print(f"| mean clumps per clumpy galaxy | {real_counts.mean():.2f} | {clumpy.mean():.2f} |")
    print(f"| fraction of boxes labelled odd | {(real.label == 2).mean():.3f} | {np.mean(odd):.3f} |")
    print(f"| galaxies with no clump | (not in the data: only galaxies with boxes) | {np.mean(counts == 0):.3f} |")


if __name__ == "__main__":
    main()
