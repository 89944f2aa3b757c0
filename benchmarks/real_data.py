"""The real-data benchmark: how well a model finds clumps in real survey images.

usage: python benchmarks/real_data.py [--model MODEL] [--name NAME] [--sections dev,ellipticals,sim,scale,learning]

Sections (each stored in docs/benchmarks/real_data.json under the model's NAME, so a rerun skips
what is done unless --force; the table docs/benchmarks/real_data.md is rewritten from the JSON):

* ``dev``: the 37 real SDSS Stripe 82 galaxies with catalogued clumps
  (../shared/data/real_clumps_gzh_s82). Matching by centre distance (docs/contracts.md: half the larger
  box side), completeness / purity / F1 for the ``clump`` class alone and for all classes, at the
  best threshold and at the model's default threshold; for every detection (the old behaviour),
  on the host galaxy only (the default now), and on the host with the image's PSF given from its
  pixel scale (FWHM = 1.2" / scale, as the catalogue's nominal boxes assume).
* ``ellipticals``: detections per image at the default threshold on 200 real SDSS ellipticals
  (Galaxy Zoo 1 class, ../shared/data/real_galaxies/sdss_gz1; a fixed random sample of those the
  real-sky training set does not use, benchmarks/real_sky_training_gz1.txt), where no clumps are
  expected; all detections and on-host only.
* ``sim``: the simulated test set (napari-clumps simulate --n 200 --seed 424242), IoU >= 0.3.
* ``scale``: the dev images resampled by 0.5 and 2 (boxes too), scored with and without the PSF
  option, to see what the pixel-scale handling buys.
* ``learning``: fine-tuning on k dev galaxies and scoring on the others (k = 5, 10, 18; two
  folds: each half of a fixed split of the 37 is once the pool to train from and once the test
  set), at the best threshold and at the fine-tuned model's own threshold.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DEV = DATA / "real_clumps_gzh_s82"
ELLIPTICALS = DATA / "real_galaxies" / "sdss_gz1"
RESULTS = ROOT / "docs" / "benchmarks" / "real_data.json"
TABLE = ROOT / "docs" / "benchmarks" / "real_data.md"
PLOT = ROOT / "docs" / "images" / "learning_curve.png"
BUILD = ROOT / "build" / "real_data"
#: GZ1 images the real-sky training set uses (hosts, negatives): never in the clump-free test sample.
TRAINING_GZ1 = ROOT / "benchmarks" / "real_sky_training_gz1.txt"
#: Seeing assumed by the dev set's nominal boxes (its README): box side = 2.5 x 1.2" / scale.
DEV_SEEING_ARCSEC = 1.2
N_ELLIPTICALS = 200
SIM_SEED, SIM_N = 424242, 200
LEARNING_KS = (5, 10, 18)
#: Fine-tuning epochs of the learning curve (its --epochs default).
LEARNING_EPOCHS = 10
CENTRE = {"rule": "centre"}
IOU = {"rule": "iou", "iou_threshold": 0.3}


def dev_set():
    """The dev images (paths), their truth table and their PSF FWHM in pixels."""
    truth = pd.read_csv(DEV / "labels.csv")
    galaxies = pd.read_csv(DEV / "galaxies.csv").sort_values("image")
    paths = [DEV / "images" / name for name in galaxies.image]
    fwhm = dict(zip(galaxies.image, DEV_SEEING_ARCSEC / galaxies.scale_arcsec_per_px))
    return paths, truth, fwhm


#: The training PSF (pixels) assumed for rows where the images' PSF is given (--psf-fwhm-px), for
#: models that do not record one; None: the model's own ``psf_fwhm_px``.
TRAINING_PSF_OVERRIDE = None


def simulated_median_psf_px() -> float:
    """The simulator's median PSF FWHM in pixels (median box side / box side per FWHM): the PSF a
    model trained on the simulations has learnt, assumed when a model records none."""
    from napari_clumps.simulate import BOX_SIDE_PER_FWHM, SimulationSettings

    return round(SimulationSettings().box_side_median / BOX_SIDE_PER_FWHM, 2)


def detect_all(model, images, names, psf_fwhm=None):
    """All detections (score >= 0.05, on and off the host); ``psf_fwhm`` a dict by name or None."""
    from napari_clumps.inference import iter_detections

    own = model.config.psf_fwhm_px
    if psf_fwhm and TRAINING_PSF_OVERRIDE is not None:
        model.config.psf_fwhm_px = TRAINING_PSF_OVERRIDE
    tables = []
    try:
        for image, name in zip(images, names):
            fwhm = psf_fwhm.get(name) if psf_fwhm else None
            for result in iter_detections(
                [image], model, names=[name], score_threshold=0.05, keep_off_host=True, psf_fwhm=fwhm, device="cpu"
            ):
                if result.error:
                    raise SystemExit(result.error)
                tables.append(result.table)
    finally:
        model.config.psf_fwhm_px = own
    return pd.concat(tables, ignore_index=True)


def scores(truth, found, names, threshold, rule, label=None, on_host=False) -> dict:
    """Best-threshold and default-threshold scores of ``found`` against ``truth``."""
    from napari_clumps.metrics import scores_table

    if label:
        found = found[found.label == label]
    if on_host:
        from napari_clumps.host import on_host_rows

        found = on_host_rows(found)
    thresholds = sorted(set(np.round(np.arange(0.05, 1.0, 0.05), 2)) | {round(threshold, 2)})
    table = scores_table(truth, found, thresholds=thresholds, images=names, **rule)
    best = table.loc[table.f1.fillna(-1).idxmax()]
    at = table.loc[(table.threshold - threshold).abs().idxmin()]
    pick = ("threshold", "completeness", "purity", "f1")
    return {"best": {k: round(float(best[k]), 4) for k in pick}, "default": {k: round(float(at[k]), 4) for k in pick}}


def section_dev(detector):
    paths, truth, fwhm = dev_set()
    names = [p.name for p in paths]
    threshold = detector.score_threshold
    found = detect_all(detector, paths, names)
    scaled = detect_all(detector, paths, names, psf_fwhm=fwhm)
    out = {}
    for variant, table, on_host in (
        ("all detections", found, False),
        ("on host", found, True),
        ("on host, PSF from pixel scale", scaled, True),
    ):
        out[variant] = {
            "clump": scores(truth, table, names, threshold, CENTRE, "clump", on_host),
            "all classes": scores(truth, table, names, threshold, CENTRE, None, on_host),
        }
    out["truth on host"] = _truth_on_host(paths, truth)
    return out


def _truth_on_host(paths, truth) -> float:
    """Fraction of catalogued clumps that the host finder puts on their galaxy."""
    from napari_clumps.host import find_host
    from napari_clumps.io import read_image

    on = 0
    for path in paths:
        rows = truth[truth.image == path.name]
        host = find_host(read_image(path))
        on += int(host.contains(rows.x_center, rows.y_center).sum()) if host else len(rows)
    return round(on / len(truth), 4)


def elliptical_sample(random_state: int = 0, exclude=()) -> list[str]:
    """200 GZ1 ellipticals never used by the real-sky training set (nor in ``exclude``).

    ``random_state`` 0 is the clump-free test sample; others serve calibration.
    """
    catalogue = pd.read_csv(ELLIPTICALS.parent / "sdss_gz1.csv")
    used = {line.strip() for line in TRAINING_GZ1.read_text().splitlines() if not line.startswith("#")}
    used |= set(exclude)
    names = catalogue[(catalogue.gz1_class == "elliptical") & ~catalogue.image.isin(used)].image.sort_values()
    return list(names.sample(N_ELLIPTICALS, random_state=random_state))


def per_image_by_threshold(found, n_images: int) -> pd.DataFrame:
    """On-host detections per image by class at thresholds 0.05-0.95 (clump-free galaxies)."""
    from napari_clumps.host import on_host_rows

    found = on_host_rows(found)
    rows = [
        {
            "threshold": t,
            **{
                label: float(((found.score >= t) & (found.label == label)).sum()) / n_images
                for label in ("clump", "odd_clump")
            },
        }
        for t in np.round(np.arange(0.05, 1.0, 0.05), 2)
    ]
    return pd.DataFrame(rows)


def section_ellipticals(detector):
    names = elliptical_sample()
    everything = detect_all(detector, [ELLIPTICALS / n for n in names], names)
    found = everything[everything.score >= detector.score_threshold]
    from napari_clumps.host import on_host_rows

    out = {
        "n_images": len(names),
        "threshold": detector.score_threshold,
        "on host by threshold": per_image_by_threshold(everything, len(names)).round(4).to_dict(orient="records"),
    }
    for variant, table in (("all detections", found), ("on host", on_host_rows(found))):
        out[variant] = {
            label: round(float((table.label == label).sum()) / len(names), 4) for label in ("clump", "odd_clump")
        }
    return out


def section_sim(detector):
    from napari_clumps.simulate import write_dataset

    folder = BUILD / f"sim_{SIM_SEED}_{SIM_N}"
    if not (folder / "truth.csv").exists():
        write_dataset(folder, n=SIM_N, seed=SIM_SEED)
    truth = pd.read_csv(folder / "truth.csv")
    images = sorted(p for p in folder.iterdir() if p.suffix in (".fits", ".jpg"))
    names = [p.name for p in images]
    found = detect_all(detector, images, names)
    return {
        "all detections": scores(truth, found, names, detector.score_threshold, IOU),
        "on host": scores(truth, found, names, detector.score_threshold, IOU, on_host=True),
    }


def section_scale(detector):
    from skimage.transform import rescale

    from napari_clumps.io import read_image

    paths, truth, fwhm = dev_set()
    names = [p.name for p in paths]
    out = {}
    for factor in (0.5, 1.0, 2.0):
        arrays = [
            np.clip(
                np.rint(
                    rescale(read_image(p).composite / 255.0, factor, channel_axis=-1, anti_aliasing=factor < 1) * 255
                ),
                0,
                255,
            ).astype(np.uint8)
            for p in paths
        ]
        moved = truth.copy()
        for column in ("x_min", "y_min", "x_max", "y_max", "x_center", "y_center"):
            moved[column] = truth[column] * factor
        for given in (False, True):
            psf = {n: f * factor for n, f in fwhm.items()} if given else None
            found = detect_all(detector, arrays, names, psf_fwhm=psf)
            key = f"x{factor:g}, PSF {'given' if given else 'not given'}"
            out[key] = scores(moved, found, names, detector.score_threshold, CENTRE, "clump", on_host=True)
    return out


#: Fine-tuning recipes of the learning curve: the library's defaults (encoder frozen, lr 3e-4) and
#: every layer trained at a lower rate.
LEARNING_RECIPES = {"learning": {}, "learning_all_layers": {"trainable_blocks": None, "learning_rate": 1e-4}}
LEARNING_RECIPE_NAMES = {
    "learning": "encoder frozen, lr 3e-4 (library defaults)",
    "learning_all_layers": "all layers, lr 1e-4",
}


def learning_folds(n_images: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(pool, test) indices of the learning curve's two folds: a fixed split of the dev set into
    halves, each once the pool to fine-tune from and once the test set."""
    order = np.random.default_rng(0).permutation(n_images)
    halves = [order[: n_images // 2], order[n_images // 2 :]]
    return [(halves[0], halves[1]), (halves[1], halves[0])]


def section_learning(detector, epochs: int, recipe: dict):
    import copy

    from napari_clumps.io import read_image
    from napari_clumps.model import Detector
    from napari_clumps.training import LabelledImage, TrainingOptions, train

    paths, truth, _ = dev_set()
    folds = learning_folds(len(paths))
    images = {p.name: read_image(p) for p in paths}
    rows = []
    for fold, (pool, test) in enumerate(folds):
        test_names = [paths[i].name for i in test]
        for k in LEARNING_KS:
            train_names = [paths[i].name for i in pool[:k]]
            items = []
            for name in train_names:
                t = truth[truth.image == name]
                items.append(
                    LabelledImage(
                        images[name],
                        t[["x_min", "y_min", "x_max", "y_max"]].to_numpy(float),
                        np.ones(len(t), int),
                        name,
                    )
                )
            base = Detector(copy.deepcopy(detector.network), detector.config, dict(detector.provenance))
            start = time.perf_counter()
            tuned = train(
                base, items, TrainingOptions(epochs=epochs, val_fraction=0.0, device="cpu", seed=fold, **recipe)
            )
            seconds = time.perf_counter() - start
            found = detect_all(tuned, [images[n] for n in test_names], test_names)
            result = scores(truth, found, test_names, tuned.score_threshold, CENTRE, "clump", on_host=True)
            rows.append({"fold": fold, "k": k, "seconds": round(seconds, 1), **result})
            print(f"fold {fold} k {k}: best F1 {result['best']['f1']:.3f}", file=sys.stderr)
    before = []
    for fold, (_, test) in enumerate(folds):
        names = [paths[i].name for i in test]
        found = detect_all(detector, [images[n] for n in names], names)
        before.append(
            {
                "fold": fold,
                "k": 0,
                **scores(truth, found, names, detector.score_threshold, CENTRE, "clump", on_host=True),
            }
        )
    return {
        "epochs": epochs,
        "recipe": {k: str(v) for k, v in recipe.items()} or "library defaults",
        "runs": before + rows,
    }


SECTIONS = {"dev": section_dev, "ellipticals": section_ellipticals, "sim": section_sim, "scale": section_scale}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="model file or packaged name")
    parser.add_argument("--name", help="row name in the results (default: the model's id)")
    parser.add_argument(
        "--sections",
        default="dev,ellipticals,sim,scale",
        help="comma-separated: dev, ellipticals, sim, scale, learning, learning_all_layers",
    )
    parser.add_argument("--epochs", type=int, default=LEARNING_EPOCHS, help="fine-tuning epochs of the learning curve")
    parser.add_argument(
        "--psf-fwhm-px",
        type=float,
        default=None,
        help="the training PSF FWHM (pixels) to assume where the images' PSF is given "
        "(default: the model's, else the simulator's median, 6.64)",
    )
    parser.add_argument("--force", action="store_true", help="rerun sections already in the results")
    args = parser.parse_args()
    import torch

    from napari_clumps.model import get_detector

    torch.set_num_threads(2)
    global TRAINING_PSF_OVERRIDE
    detector = get_detector(args.model, "cpu")
    TRAINING_PSF_OVERRIDE = args.psf_fwhm_px or detector.config.psf_fwhm_px or simulated_median_psf_px()
    name = args.name or detector.model_id
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    entry = results.setdefault(name, {"model": str(args.model), "model_id": detector.model_id})
    entry["psf_fwhm_px"] = TRAINING_PSF_OVERRIDE
    for section in args.sections.split(","):
        if section in entry and not args.force:
            continue
        start = time.perf_counter()
        entry[section] = (
            section_learning(detector, args.epochs, LEARNING_RECIPES[section])
            if section in LEARNING_RECIPES
            else SECTIONS[section](detector)
        )
        entry[section + "_seconds"] = round(time.perf_counter() - start, 1)
        RESULTS.write_text(json.dumps(results, indent=1))
        print(f"{name}: {section} done in {entry[section + '_seconds']:.0f} s", file=sys.stderr)
    write_table(results)


def _cell(s: dict) -> str:
    return f"{s['completeness']:.2f} / {s['purity']:.2f} / **{s['f1']:.2f}** @ {s['threshold']:.2f}"


def write_table(results: dict) -> None:
    lines = [
        "# Real-data benchmark",
        "",
        "Written by `python benchmarks/real_data.py` (see its docstring for what each section does).",
        'Cells: completeness / purity / **F1** @ score threshold; "best" is the threshold with the best F1,',
        '"default" the model\'s own threshold. Dev set: 37 real SDSS Stripe 82 galaxies, 213 catalogued',
        "clumps, matched by centre distance.",
        "",
    ]
    lines += [
        "## Dev set (real clumps)",
        "",
        "| model | detections | class | best | default |",
        "|---|---|---|---|---|",
    ]
    for name, entry in results.items():
        for variant, by_class in entry.get("dev", {}).items():
            if not isinstance(by_class, dict):
                continue
            for klass, s in by_class.items():
                lines.append(f"| {name} | {variant} | {klass} | {_cell(s['best'])} | {_cell(s['default'])} |")
    lines += [
        "",
        'Rows "PSF from pixel scale" resample each image by (training PSF) / (1.2" / its scale); training PSF '
        "assumed: " + ", ".join(f"{n} {e.get('psf_fwhm_px', 0):g} px" for n, e in results.items()) + ".",
    ]
    lines += [
        "",
        "Fraction of catalogued clumps the host finder puts on their galaxy: "
        + ", ".join(f"{n} {e['dev']['truth on host']:.3f}" for n, e in results.items() if "dev" in e),
        "",
    ]
    lines += [
        "## Real clump-free galaxies (SDSS ellipticals)",
        "",
        "Detections per image at the model's default threshold.",
        "",
        "| model | images | threshold | all: clump | all: odd clump | on host: clump | on host: odd clump |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in results.items():
        e = entry.get("ellipticals")
        if e:
            a, h = e["all detections"], e["on host"]
            lines.append(
                f"| {name} | {e['n_images']} | {e['threshold']:.2f} | {a['clump']:.3f} | "
                f"{a['odd_clump']:.3f} | {h['clump']:.3f} | {h['odd_clump']:.3f} |"
            )
    lines += [
        "",
        f"## Simulated test set (seed {SIM_SEED}, {SIM_N} galaxies, FITS + JPEG, IoU >= 0.3, all classes)",
        "",
        "| model | detections | best | default |",
        "|---|---|---|---|",
    ]
    for name, entry in results.items():
        for variant, s in entry.get("sim", {}).items():
            lines.append(f"| {name} | {variant} | {_cell(s['best'])} | {_cell(s['default'])} |")
    lines += [
        "",
        "## Pixel scale: dev images resampled, clump class, on host",
        "",
        "| model | resampling, PSF option | best | default |",
        "|---|---|---|---|",
    ]
    for name, entry in results.items():
        for variant, s in entry.get("scale", {}).items():
            lines.append(f"| {name} | {variant} | {_cell(s['best'])} | {_cell(s['default'])} |")
    lines += [
        "",
        "## Learning curve: fine-tuned on k dev galaxies, scored on others (clump class, on host)",
        "",
        "| model | recipe | fold | k | best | fine-tuned model's threshold | training s |",
        "|---|---|---|---|---|---|---|",
    ]
    means = []
    for name, entry in results.items():
        for key in LEARNING_RECIPES:
            learning = entry.get(key)
            for run in learning["runs"] if learning else []:
                lines.append(
                    f"| {name} | {LEARNING_RECIPE_NAMES[key]}, {learning['epochs']} epochs | {run['fold']} | "
                    f"{run['k']} | {_cell(run['best'])} | {_cell(run['default'])} | {run.get('seconds', '')} |"
                )
            tuned = [run for run in learning["runs"] if run["k"] > 0] if learning else []
            if tuned:
                best = np.mean([run["best"]["f1"] for run in tuned])
                seconds = sum(run.get("seconds") or 0 for run in tuned)
                means.append(
                    f"{name}, {LEARNING_RECIPE_NAMES[key]}: mean best F1 over k > 0 and both folds "
                    f"{best:.3f}, training {seconds:.0f} s in all"
                )
    if means:
        lines += ["", *[f"- {line}" for line in means]]
    lines.append("")
    TABLE.write_text("\n".join(lines))
    _plot_learning(results)


def _plot_learning(results: dict) -> None:
    entries = {f"{n}, {LEARNING_RECIPE_NAMES[k]}": e[k] for n, e in results.items() for k in LEARNING_RECIPES if k in e}
    if not entries:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    for name, learning in entries.items():
        runs = pd.DataFrame(
            [
                {"fold": r["fold"], "k": r["k"], "best": r["best"]["f1"], "own": r["default"]["f1"]}
                for r in learning["runs"]
            ]
        )
        for fold, group in runs.groupby("fold"):
            group = group.sort_values("k")
            ax.plot(group.k, group.best, "o-", label=f"{name}, fold {fold}, best threshold")
            ax.plot(group.k, group.own, "x--", label=f"{name}, fold {fold}, model's threshold")
    ax.set_xlabel("real dev galaxies fine-tuned on (k)")
    ax.set_ylabel("F1 on the other half (clump class)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(PLOT)


if __name__ == "__main__":
    main()
