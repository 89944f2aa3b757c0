"""Training data from the real sky: simulated clumps injected into real galaxies (+ real negatives).

usage:
  python tools/make_real_training_set.py --out DIR [--data ../shared/data/real_galaxies]
         [--n-injected 600] [--n-negatives 300] [--seed 0] [--crop 256] [--quality 90] [--jobs 1]
  python tools/make_real_training_set.py --montage docs/images/injection_montage.png [--dev DEV_DIR]
  python tools/make_real_training_set.py --calibrate [--dev ../shared/data/real_clumps_gzh_s82]

Hosts are real galaxies where real, unlabelled clumps are unlikely (docs/real-sky-training.md):
Galaxy Zoo 1 ellipticals of SDSS (``sdss_gz1``; the redder ones, see ``--max-host-blueness``) and
DECaLS galaxies with few "featured" votes, no ring, few spiral-arm votes (``decals_dr5``). Each
injected image is the centre ``--crop`` of a host with 1-9 clumps from
:func:`napari_clumps.inject.inject_clumps` (PSF measured on the full cutout, host footprint from
:func:`napari_clumps.host.find_host`); each negative is the centre crop of another elliptical,
untouched. Writes ``DIR/images/*.jpg`` (JPEG quality ``--quality``), ``DIR/truth.csv`` in the
detections format with ``DIR/truth.images.csv`` listing every image (negatives have
``n_detections = 0``), and ``DIR/sources.json`` (folders, selection, settings, seed, timings).
Deterministic for a seed: host choice and each image's clumps come from
``SeedSequence([seed, ...])``, whatever ``--jobs``.

``--calibrate`` measures real clumps of the development set with
:func:`napari_clumps.inject.measure_clump` (the numbers behind :class:`InjectionSettings`) and the
same quantities on freshly injected clumps (the closure check). ``--montage`` draws hosts before and
after injection with their truth boxes, beside real development galaxies with their catalogue boxes.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared/data/real_galaxies"
DEFAULT_DEV = ROOT.parent / "shared/data/real_clumps_gzh_s82"
MODEL_ID = "injection-truth"
#: DECaLS hosts: no ring, "featured" vote fraction at most this (the catalogue's minimum is 0.60:
#: every galaxy of this example set is featured-ish; these are the smoothest), "no spiral arms"
#: at least this.
DECALS_MAX_FEATURED = 0.65
DECALS_MIN_NO_SPIRAL = 0.60
#: Seeing assumed by the development set's nominal boxes (arcsec), from its README.
DEV_SEEING_ARCSEC = 1.2


# ----------------------------------------------------------------------------- hosts


def candidate_hosts(data: Path, seed: int):
    """(folder, file, class) candidates in a seeded order: ellipticals first-class, DECaLS mixed in."""
    import pandas as pd

    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    gz1 = pd.read_csv(data / "sdss_gz1.csv")
    ellipticals = gz1[gz1.gz1_class == "elliptical"].image.tolist()
    decals = pd.read_csv(data / "decals_dr5.csv")
    smooth = decals[
        (decals.ring == 0) & (decals["_4"] <= DECALS_MAX_FEATURED) & (decals["_6"] >= DECALS_MIN_NO_SPIRAL)
    ].image.tolist()
    ellipticals = [("sdss_gz1", name, "gz1_elliptical") for name in sorted(ellipticals)]
    smooth = [("decals_dr5", name, "decals_smooth") for name in sorted(smooth)]
    return (
        [ellipticals[i] for i in rng.permutation(len(ellipticals))],
        [smooth[i] for i in rng.permutation(len(smooth))],
    )


def centre_crop(rgb: np.ndarray, crop: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    size_y, size_x = min(crop, height), min(crop, width)
    r0, c0 = (height - size_y) // 2, (width - size_x) // 2
    return np.ascontiguousarray(rgb[r0 : r0 + size_y, c0 : c0 + size_x])


def host_of(rgb: np.ndarray):
    """(mask, how): the footprint from find_host when importable, else from host_mask_from_light."""
    from napari_clumps.inject import host_mask_from_light

    try:
        from napari_clumps.host import find_host
    except ImportError:
        find_host = None
    if find_host is not None:
        host = find_host(rgb)
        if host is None:
            return np.zeros(rgb.shape[:2], bool), "find_host: none"
        return np.asarray(host.mask, bool), "find_host"
    return host_mask_from_light(rgb), "host_mask_from_light"


def host_blueness(rgb: np.ndarray, mask: np.ndarray) -> float:
    """2.5 log10(B/R) of the host's summed linearised light: larger is bluer (0 = neutral)."""
    from napari_clumps.inject import linearise_rgb

    light = linearise_rgb(rgb)[mask].sum(axis=0)
    if light[0] <= 0 or light[2] <= 0:
        return float("nan")
    return float(2.5 * np.log10(light[2] / light[0]))


def read_rgb(path: Path) -> np.ndarray:
    from napari_clumps.io import read_image

    return read_image(path).composite


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def make_one(task):
    """Build one image. Returns a dict (a result) or one with ``skip`` saying why not."""
    from napari_clumps.inject import estimate_psf_fwhm, inject_clumps

    kind, (folder, name, klass), data, crop, quality, seed, index, max_blueness, min_host_fwhm = task
    started = time.perf_counter()
    full = read_rgb(data / folder / name)
    rgb = centre_crop(full, crop)
    mask, how = host_of(rgb)
    if not mask.any():
        return {"skip": f"no host ({how})"}
    blueness = host_blueness(rgb, mask)
    if folder == "sdss_gz1" and not blueness <= max_blueness:
        return {"skip": "host too blue for a clump-free elliptical"}
    fwhm = estimate_psf_fwhm(full)  # on the full cutout: more stars than the crop
    boxes = np.zeros((0, 4))
    if kind == "injected":
        if fwhm is None:
            return {"skip": "PSF not measurable"}
        if np.sqrt(mask.sum() / np.pi) < min_host_fwhm * fwhm:
            return {"skip": "host too small for its PSF"}
        rng = np.random.default_rng(np.random.SeedSequence([seed, 1, index]))
        rgb, boxes, _ = inject_clumps(rgb, mask, rng, psf_fwhm=fwhm)
        if not len(boxes):
            return {"skip": "no room for a clump"}
    return {
        "kind": kind,
        "folder": folder,
        "source": name,
        "class": klass,
        "jpeg": encode_jpeg(rgb, quality),
        "boxes": boxes,
        "width": rgb.shape[1],
        "height": rgb.shape[0],
        "psf_fwhm_px": fwhm,
        "host_blueness": blueness,
        "host_mask": how,
        "seconds": time.perf_counter() - started,
    }


def _map(function, tasks, jobs: int):
    """Results in task order (deterministic whatever the number of processes)."""
    if jobs <= 1:
        yield from map(function, tasks)
        return
    from multiprocessing import get_context

    with get_context("spawn").Pool(jobs) as pool:
        yield from pool.imap(function, tasks, chunksize=2)


def build(args) -> Path:
    import pandas as pd

    from napari_clumps.detections import detections_frame, write_detections
    from napari_clumps.inject import InjectionSettings

    data, out = Path(args.data), Path(args.out)
    for folder in ("sdss_gz1", "decals_dr5"):
        if not (data / folder).is_dir():
            sys.exit(f"{data / folder}: no such folder (give --data, the real_galaxies folder)")
    (out / "images").mkdir(parents=True, exist_ok=True)
    ellipticals, decals = candidate_hosts(data, args.seed)
    n_decals = int(round(args.decals_fraction * args.n_injected))
    # Hosts for injection: DECaLS take every k-th slot; negatives are ellipticals never used as hosts.
    queue_e = iter(ellipticals)
    queue_d = iter(decals)
    started = time.perf_counter()
    results, skipped = [], {}

    def run(kind, want, pick):
        made, index = 0, len(results) + sum(skipped.values())
        while made < want:
            batch = []
            # A batch a little larger than what is missing (about a third of candidates are
            # skipped), so that no more hosts are consumed than needed.
            for _ in range(min(max(2 * (want - made), 4), 16 * max(args.jobs, 1))):
                source = pick(made + len(batch))
                if source is None:
                    break
                batch.append(
                    (
                        kind,
                        source,
                        data,
                        args.crop,
                        args.quality,
                        args.seed,
                        index,
                        args.max_host_blueness,
                        args.min_host_fwhm,
                    )
                )
                index += 1
            if not batch:
                print(f"warning: ran out of {kind} hosts after {made}", file=sys.stderr)
                return
            for result in _map(make_one, batch, args.jobs):
                if made >= want:
                    break
                if "skip" in result:
                    skipped[result["skip"]] = skipped.get(result["skip"], 0) + 1
                    continue
                results.append(result)
                made += 1
                if made % 50 == 0:
                    print(f"{kind}: {made}/{want} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    decals_left = [n_decals]

    def pick_host(slot):
        # Spread the DECaLS hosts over the set; fall back to ellipticals when they run out.
        if decals_left[0] > 0 and slot % max(1, round(1 / max(args.decals_fraction, 1e-9))) == 0:
            source = next(queue_d, None)
            if source is not None:
                decals_left[0] -= 1
                return source
        return next(queue_e, None)

    run("injected", args.n_injected, pick_host)
    run("negative", args.n_negatives, lambda slot: next(queue_e, None))

    tables, images, numbers = [], [], {}
    for result in results:
        k = numbers[result["kind"]] = numbers.get(result["kind"], -1) + 1
        file_name = f"images/{result['kind'][:3]}_{k:05d}.jpg"
        (out / file_name).write_bytes(result["jpeg"])
        labels = ["clump"] * len(result["boxes"])
        tables.append(detections_frame(file_name, result["boxes"], labels, scores=1.0, model=MODEL_ID))
        images.append(
            dict(
                image=file_name,
                status="ok",
                n_detections=len(result["boxes"]),
                width=result["width"],
                height=result["height"],
                kind=result["kind"],
                source=f"{result['folder']}/{result['source']}",
                host_class=result["class"],
                psf_fwhm_px=None if result["psf_fwhm_px"] is None else round(result["psf_fwhm_px"], 3),
                host_blueness=round(result["host_blueness"], 3),
                host_mask=result["host_mask"],
            )
        )
    truth = out / "truth.csv"
    write_detections(pd.concat(tables, ignore_index=True), truth, pd.DataFrame(images))
    elapsed = time.perf_counter() - started
    kinds = pd.DataFrame(images).kind.value_counts().to_dict() if images else {}
    record = {
        "data": str(data.resolve()),
        "folders_used": sorted({f"{r['folder']}" for r in results}),
        "selection": {
            "sdss_gz1": "gz1_class == elliptical (Galaxy Zoo 1 majority) and host blueness "
            f"2.5 log10(B/R) <= {args.max_host_blueness}",
            "decals_dr5": f"ring == 0, featured fraction (_4) <= {DECALS_MAX_FEATURED}, "
            f"no-spiral-arms fraction (_6) >= {DECALS_MIN_NO_SPIRAL}; hosts only",
            "negatives": "sdss_gz1 ellipticals (same cut), never used as hosts, no injection",
        },
        "seed": args.seed,
        "n_injected": kinds.get("injected", 0),
        "n_negatives": kinds.get("negative", 0),
        "n_boxes": int(sum(len(r["boxes"]) for r in results)),
        "crop": args.crop,
        "jpeg_quality": args.quality,
        "decals_fraction": args.decals_fraction,
        "min_host_fwhm": args.min_host_fwhm,
        "skipped": skipped,
        "seconds": round(elapsed, 1),
        "jobs": args.jobs,
        "injection_settings": asdict(InjectionSettings()),
    }
    (out / "sources.json").write_text(json.dumps(record, indent=2, default=str))
    print(
        f"{record['n_injected']} injected ({record['n_boxes']} clumps) + {record['n_negatives']} negatives "
        f"in {elapsed:.0f} s -> {truth}"
    )
    print(f"skipped candidates: {skipped}")
    return truth


# ----------------------------------------------------------------------------- calibration


def dev_measurements(dev: Path):
    """Real clumps of the development set measured as injected ones are (one dict per clump)."""
    import pandas as pd

    from napari_clumps.inject import _mask_ellipse, estimate_psf_fwhm

    labels = pd.read_csv(dev / "labels.csv")
    galaxies = pd.read_csv(dev / "galaxies.csv").set_index("image")
    rows, psf_rows = [], []
    for name, clumps in labels.groupby("image"):
        rgb = read_rgb(dev / "images" / name)
        nominal = DEV_SEEING_ARCSEC / float(galaxies.loc[name, "scale_arcsec_per_px"])
        estimate = estimate_psf_fwhm(rgb)
        psf_rows.append(dict(image=name, nominal=nominal, estimate=estimate))
        mask, _ = host_of(rgb)
        ellipse = _mask_ellipse(mask) if mask.any() else None
        rows += _measure_at(rgb, clumps[["x_center", "y_center"]].to_numpy(float), estimate, nominal, ellipse, name)
    return pd.DataFrame(rows), pd.DataFrame(psf_rows)


def _measure_at(rgb, centres, fwhm, nominal, ellipse, name):
    from napari_clumps.inject import _apertures, _elliptical_radius, equivalent_size, linearise_rgb, measure_clump

    linear = linearise_rgb(rgb)
    display = rgb.mean(axis=-1)
    fwhm_used = fwhm if fwhm is not None else 1.77 * nominal  # the dev set's median estimate/nominal
    rows = []
    for x, y in centres:
        m = measure_clump(linear, x, y, fwhm_used)
        core, _, ring = _apertures(rgb.shape[:2], x, y, fwhm_used)
        rows.append(
            dict(
                image=name,
                x=x,
                y=y,
                fwhm=fwhm_used,
                psf_measured=fwhm is not None,
                contrast=m.contrast,
                snr=m.snr,
                blueness=m.blueness,
                size=equivalent_size(m.concentration, fwhm_used),
                display_excess=float(display[core].mean() - np.median(display[ring])),
                host_radius=float(_elliptical_radius(x, y, ellipse)) if ellipse is not None else np.nan,
            )
        )
    return rows


def closure_measurements(data: Path, n_hosts: int, seed: int, crop: int, quality: int):
    """Injected clumps (after JPEG encoding) measured with the same code as the real ones."""
    import pandas as pd
    from PIL import Image

    from napari_clumps.inject import _mask_ellipse, estimate_psf_fwhm, inject_clumps

    ellipticals, decals = candidate_hosts(data, seed)
    rows, done = [], 0
    for folder, name, _ in ellipticals[: 4 * n_hosts]:
        if done >= n_hosts:
            break
        full = read_rgb(data / folder / name)
        rgb = centre_crop(full, crop)
        mask, _ = host_of(rgb)
        fwhm = estimate_psf_fwhm(full)
        if not mask.any() or fwhm is None:
            continue
        new, boxes, _ = inject_clumps(rgb, mask, np.random.default_rng([seed, done]), psf_fwhm=fwhm)
        if not len(boxes):
            continue
        new = np.asarray(Image.open(io.BytesIO(encode_jpeg(new, quality))).convert("RGB"))
        centres = np.column_stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2])
        rows += _measure_at(new, centres, fwhm, fwhm / 1.77, _mask_ellipse(mask), name)
        done += 1
    return pd.DataFrame(rows)


def calibrate(args) -> None:
    dev = Path(args.dev)
    real, psf = dev_measurements(dev)
    ratio = (psf.estimate / psf.nominal).dropna()
    print(
        f'PSF: measured on {len(ratio)}/{len(psf)} dev images; estimate / nominal 1.2" seeing: '
        f"5/25/50/75/95 % = {np.round(np.percentile(ratio, [5, 25, 50, 75, 95]), 2).tolist()}; "
        f"within 25 % of the median ratio: {np.mean(abs(ratio / ratio.median() - 1) < 0.25):.2f}"
    )
    injected = closure_measurements(Path(args.data), args.closure_hosts, args.seed, args.crop, args.quality)

    def describe(table, label):
        print(f"\n{label}: {len(table)} clumps")
        for column in ("contrast", "snr", "display_excess", "blueness", "size", "host_radius"):
            for label_, rows in (("all", table), ("S/N>1", table[table.snr > 1])):
                values = rows[column].replace([np.inf, -np.inf], np.nan).dropna()
                if len(values):
                    pct = np.percentile(values, [10, 25, 50, 75, 90])
                    print(
                        f"  {column:15s} {label_:5s} n={len(values):4d}  10/25/50/75/90 % = "
                        + " / ".join(f"{v:.3g}" for v in pct)
                    )

    describe(real, "real dev-set clumps")
    describe(injected, "injected clumps (closure, after JPEG)")
    if args.calibration_csv:
        real.assign(kind="real").to_csv(args.calibration_csv, index=False)
        injected.assign(kind="injected").to_csv(args.calibration_csv, mode="a", header=False, index=False)


# ----------------------------------------------------------------------------- montage


def montage(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    from matplotlib.patches import Rectangle
    from PIL import Image

    from napari_clumps.inject import estimate_psf_fwhm, inject_clumps

    data, dev = Path(args.data), Path(args.dev)
    ellipticals, decals = candidate_hosts(data, args.seed)
    hosts = []
    for source in decals[:3] + ellipticals[:40]:
        if len(hosts) >= 6:
            break
        if source[0] == "decals_dr5" and hosts:
            continue  # one DECaLS host is enough to show
        folder, name, _ = source
        full = read_rgb(data / folder / name)
        rgb = centre_crop(full, args.crop)
        mask, _ = host_of(rgb)
        fwhm = estimate_psf_fwhm(full)
        if not mask.any() or fwhm is None:
            continue
        if folder == "sdss_gz1" and host_blueness(rgb, mask) > args.max_host_blueness:
            continue
        if np.sqrt(mask.sum() / np.pi) < args.min_host_fwhm * fwhm:
            continue
        new, boxes, _ = inject_clumps(rgb, mask, np.random.default_rng([args.seed, len(hosts)]), psf_fwhm=fwhm)
        if len(boxes):
            new = np.asarray(Image.open(io.BytesIO(encode_jpeg(new, args.quality))).convert("RGB"))
            hosts.append((f"{folder}/{name[:18]}", rgb, new, boxes, mask, fwhm))
    labels = pd.read_csv(dev / "labels.csv")
    dev_names = sorted(labels.image.unique())[: len(hosts)]
    fig, axes = plt.subplots(len(hosts), 4, figsize=(12, 3.1 * len(hosts)))
    for row, (title, before, after, boxes, mask, fwhm) in enumerate(hosts):
        for col, (image, draw) in enumerate([(before, False), (after, False), (after, True)]):
            ax = axes[row, col]
            ax.imshow(image, extent=(0, image.shape[1], image.shape[0], 0), interpolation="nearest")
            if col == 0:
                ax.contour(
                    np.arange(mask.shape[1]) + 0.5,
                    np.arange(mask.shape[0]) + 0.5,
                    mask,
                    [0.5],
                    colors="yellow",
                    linewidths=0.6,
                )
            if draw:
                for x0, y0, x1, y1 in boxes:
                    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="#00e5ff", lw=1))
            ax.set_title([f"{title}\nhost (mask), PSF {fwhm:.1f} px", "injected", "injected + truth"][col], fontsize=7)
        rgb = read_rgb(dev / "images" / dev_names[row])
        ax = axes[row, 3]
        ax.imshow(rgb, extent=(0, rgb.shape[1], rgb.shape[0], 0), interpolation="nearest")
        for r in labels[labels.image == dev_names[row]].itertuples():
            ax.add_patch(
                Rectangle((r.x_min, r.y_min), r.x_max - r.x_min, r.y_max - r.y_min, fill=False, ec="#ff9f1c", lw=1)
            )
        ax.set_title(f"real dev galaxy {dev_names[row][:16]}\ncatalogue clumps (nominal boxes)", fontsize=7)
        _zoom(axes[row, 3], host_of(rgb)[0], args.crop)
        for col in range(3):
            _zoom(axes[row, col], mask, args.crop)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    Path(args.montage).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.montage, dpi=args.dpi)
    print(args.montage)


def _zoom(ax, mask, crop):
    """Zoom on the host: a square of 2.6 x the semi-major axis of the mask's ellipse (at least
    64 px), kept inside the image."""
    from napari_clumps.inject import _mask_ellipse

    if not mask.any():
        return
    height, width = mask.shape
    centre_x, centre_y, semi_major, _, _ = _mask_ellipse(mask)
    half = min(max(1.3 * semi_major, 32), width / 2, height / 2)
    x0 = float(np.clip(centre_x - half, 0, width - 2 * half))
    y0 = float(np.clip(centre_y - half, 0, height - 2 * half))
    ax.set_xlim(x0, x0 + 2 * half)
    ax.set_ylim(y0 + 2 * half, y0)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="the real_galaxies folder")
    parser.add_argument("--out", help="output folder of the training set")
    parser.add_argument("--n-injected", type=int, default=600)
    parser.add_argument("--n-negatives", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crop", type=int, default=256, help="centre crop side, px")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument(
        "--decals-fraction",
        type=float,
        default=0.1,
        help="fraction of injected hosts from decals_dr5 (at most its 65 smooth ones)",
    )
    parser.add_argument(
        "--max-host-blueness",
        type=float,
        default=-0.3,
        help="GZ1 ellipticals bluer than this (2.5 log10 B/R of the host light) are skipped",
    )
    parser.add_argument(
        "--min-host-fwhm", type=float, default=4.0, help="skip hosts whose footprint radius is under this many PSF FWHM"
    )
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--calibrate", action="store_true", help="measure real and injected clumps")
    parser.add_argument("--calibration-csv", help="with --calibrate: write every measurement here")
    parser.add_argument("--closure-hosts", type=int, default=60)
    parser.add_argument("--dev", default=str(DEFAULT_DEV), help="the real_clumps_gzh_s82 folder")
    parser.add_argument("--montage", help="write a before/after montage PNG here")
    parser.add_argument("--dpi", type=int, default=80)
    args = parser.parse_args(argv)
    if args.calibrate:
        calibrate(args)
    elif args.montage:
        montage(args)
    elif args.out:
        build(args)
    else:
        parser.error("give --out DIR, --calibrate or --montage PNG")


if __name__ == "__main__":
    main()
