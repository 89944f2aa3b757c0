"""``napari-clumps`` command line (also ``python -m napari_clumps``).

Errors are one line naming the file and the reason, with a non-zero exit status; ``--debug``
shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
from pathlib import Path


def _progress(iterable, desc: str, total: int | None = None):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit="img", disable=None, file=sys.stderr)


def cmd_simulate(args) -> int:
    from .simulate import write_dataset

    truth = write_dataset(
        args.outdir, n=args.n, seed=args.seed, progress=lambda it: _progress(it, "simulating", args.n)
    )
    print(f"wrote {args.n} galaxies (FITS + JPEG) to {args.outdir}; truth: {truth}")
    return 0


def _say(message: str) -> None:
    """A status line on stderr that does not break a running progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


def cmd_detect(args) -> int:
    """Detections streamed to the CSV image by image (and DS9 regions with ``--regions``); another
    format of ``--out`` is written from the CSV when the run ends; ``--resume`` continues a stopped run."""
    import time

    from .detections import DetectionsWriter, check_writable, detections_columns
    from .export import check_catalogue_path, check_regions_folder, region_path, working_csv_path, write_regions
    from .io import find_images
    from .photometry import first_image_band_labels

    # Everything that can be checked without torch fails here, before the model loads.
    check_catalogue_path(check_writable(args.out))
    on_cluster = args.workers is not None or args.scheduler is not None
    if on_cluster:
        from .distributed import require_distributed

        require_distributed()
        if args.num_workers:
            raise ValueError(
                "--num-workers (reading processes of one run) does not go with --workers or --scheduler; "
                "each worker reads its own images"
            )
    found = find_images(args.paths, strict=True)
    if not found:
        raise ValueError(f"{' '.join(map(str, args.paths))}: no FITS, JPEG or PNG images found")
    csv = working_csv_path(args.out)
    # A catalogue in another format is written from the streamed CSV at the end (None: the CSV is it).
    catalogue = None if csv == args.out else args.out
    if args.regions is not None:
        check_regions_folder(args.regions)
    # The photometry columns are those of the first image's bands (a resumed file keeps its own).
    columns = None
    if not (args.resume and Path(csv).exists()):
        columns = detections_columns(first_image_band_labels([path for path, _ in found]))
    writer = DetectionsWriter(csv, columns, resume=args.resume)
    for note in writer.notes:
        _say(f"note: {note}")
    todo = [(path, name) for path, name in found if name not in writer.done]
    if args.catalog is not None:
        _say(_catalog_note(args.catalog, [(path, name) for path, name in todo]))
    if writer.done:
        _say(f"resuming {csv}: {len(found) - len(todo)} of {len(found)} images done, {len(todo)} to do")
    if not todo and (catalogue is None or _newer_than(catalogue, csv)):
        print(f"nothing to do: all {len(found)} images are in {args.out} ({writer.done_rows} clumps)")
        return 0

    from .inference import iter_detections
    from .model import get_detector, select_device
    from .scale import unused_psf_note

    # On a cluster each worker picks its device; here the model is only checked (on the CPU).
    device = None if on_cluster else select_device(args.device)
    detector = get_detector(args.model, "cpu" if on_cluster else str(device))
    threshold = detector.score_threshold if args.score_threshold is None else args.score_threshold
    _say(
        f"model: {detector.source} ({detector.model_id}); device: {'each worker' if on_cluster else device}"
        + (" (auto)" if args.device == "auto" else "")
        + f"; score threshold {threshold:g}"
        + (" (the model's)" if args.score_threshold is None else "")
    )
    note = unused_psf_note(detector.config, args.psf_fwhm, args.pixel_scale)
    if note:
        _say(f"note: {detector.model_id}: {note}; they are used as they are")
    others = writer.models - {detector.model_id}
    if others:
        _say(f"note: {csv} holds rows of {', '.join(sorted(others))}; this run adds {detector.model_id}'s")
    options = {
        "batch_size": args.batch_size,
        "score_threshold": threshold,
        "nms_iou": args.nms_iou,
        "keep_off_host": args.keep_off_host,
        "psf_fwhm": args.psf_fwhm,
        "pixel_scale": args.pixel_scale,
        "seeing": args.seeing,
        "catalog": args.catalog,
    }
    if catalogue is not None:
        catalogue.unlink(missing_ok=True)  # it exists only as a whole run's result, never stale
    started = time.perf_counter()
    with writer, _stop_on_signals() as stop, contextlib.ExitStack() as cluster:
        if not todo:  # all done before; only the catalogue is missing
            results = []
        elif on_cluster:
            results = _cluster_results(cluster, args, todo, stop, options)
        else:
            results = iter_detections(
                [p for p, _ in todo],
                detector,
                names=[n for _, n in todo],
                device=str(device),
                should_stop=stop.is_set,
                num_workers=args.num_workers,
                **options,
            )
        try:
            for result in _progress(results, "detecting", len(todo)):
                if args.regions is not None and not result.error:
                    # before the images list names the image, so that a listed image has its file
                    write_regions(result.table, region_path(args.regions, result.name), result.wcs)
                writer.append(result.images_row(), result.table)
                if result.error:
                    _say(f"error: {result.error}")
        except BaseException:
            _say(f"{writer.n_images} finished images are in {csv}; --resume continues the run")
            raise
    if catalogue is not None:
        _write_catalogue_from_csv(csv, catalogue, detector, threshold, args)
    seconds = time.perf_counter() - started
    done, failed = writer.n_images, writer.n_failed
    earlier = len(writer.done)
    outputs = f"{args.out}" if catalogue is None else f"{catalogue} (streamed to {csv})"
    if args.regions is not None:
        outputs += f", DS9 regions in {args.regions}"
    print(
        f"{writer.n_rows} clumps in {done - failed} images ({failed} failed) in {seconds:.1f} s "
        f"({done / max(seconds, 1e-9):.2f} images/s) -> {outputs} (images: {writer.images_path})"
        + (
            f"; with the earlier run: {earlier + done - failed} images, {writer.done_rows + writer.n_rows} clumps"
            if earlier
            else ""
        )
    )
    if writer.n_other_bands:
        _say(
            f"note: {writer.n_other_bands} images have other bands than the file's photometry columns "
            f"({args.out}: those of the first image); their photometry cells are empty"
        )
    if failed:
        print(f"{failed} of {done} images failed; see the error lines above and the images list", file=sys.stderr)
    if stop.signal is not None:
        print(
            f"stopped by {stop.name}: {len(todo) - done} of {len(found)} images left; "
            "run the same command with --resume to finish",
            file=sys.stderr,
        )
        return 128 + stop.signal
    return 1 if failed else 0


def _catalog_note(catalog, images) -> str:
    """What a cutout catalogue will do for these ``(path, name)`` images; a name that two rows fit
    fails here, before the model loads. Only file names are looked at: whether a file has a WCS
    of its own is known when it is read (FITS files usually do, and keep it)."""
    from .io import is_fits_path

    rasters = [name for path, name in images if not is_fits_path(path)]
    matched = [name for name in rasters if catalog.match(name) is not None]
    missing = [name for name in rasters if name not in set(matched)]
    note = f"cutout catalogue {catalog.path}: sky positions for {len(matched)} of {len(rasters)} JPEG/PNG images"
    if missing:
        note += f" (not in it: {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "") + ")"
    return note + "; FITS files with a WCS keep their own"


def _newer_than(path: Path, other: Path) -> bool:
    return path.exists() and path.stat().st_mtime_ns >= other.stat().st_mtime_ns


def _write_catalogue_from_csv(csv: Path, catalogue: Path, detector, threshold: float, args) -> None:
    """The requested format, written atomically from the whole streamed CSV, with the run's provenance."""
    from .detections import read_detections
    from .export import provenance, write_catalogue

    model_file = detector.source if detector.source and Path(detector.source).is_file() else None
    write_catalogue(
        read_detections(csv),
        catalogue,
        provenance(
            model_id=detector.model_id,
            model_file=model_file,
            score_threshold=threshold,
            nms_iou=args.nms_iou,
            command=getattr(args, "command_line", None),
        ),
    )


def _cluster_results(stack, args, todo, stop, options):
    """The outcomes of a run on a Dask cluster (``--workers`` / ``--scheduler``); the cluster is
    closed (or the client of an outside one) when ``stack`` closes."""
    import time

    from .distributed import dask_client, iter_detections_on_cluster, worker_device

    where = f"a local cluster of {args.workers} worker processes" if args.scheduler is None else args.scheduler
    _say(f"starting {where}" if args.scheduler is None else f"connecting to {where}")
    started = time.perf_counter()
    client = stack.enter_context(dask_client(workers=args.workers, scheduler=args.scheduler))
    devices = client.run(worker_device, args.device)  # also: a worker without the device fails here
    counts = {}
    for name in devices.values():
        counts[name] = counts.get(name, 0) + 1
    _say(
        f"{len(devices)} workers ({', '.join(f'{n} on {d}' for d, n in sorted(counts.items()))}) ready in "
        f"{time.perf_counter() - started:.1f} s; "
        f"{args.chunk_size} images per task, {math.ceil(len(todo) / args.chunk_size)} tasks"
    )
    # The model travels as its file (an absolute path) or name; each worker loads it once.
    model = str(Path(args.model).resolve()) if Path(args.model).is_file() else args.model
    return stack.enter_context(
        contextlib.closing(
            iter_detections_on_cluster(
                todo, model, client, device=args.device, chunk_size=args.chunk_size, should_stop=stop.is_set, **options
            )
        )
    )


class _Stop:
    """The first SIGINT or SIGTERM asks a run to stop after the batch in progress (what is
    finished is written); a second SIGINT interrupts at once."""

    #: What the first signal makes the run do, after the signal's name.
    DETECT = "stopping after the current batch (finished images are kept; Ctrl-C again to stop at once)"

    def __init__(self, doing: str = DETECT):
        self.signal, self.doing = None, doing

    def is_set(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name

    def handle(self, signum, _frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        sys.stderr.write(f"\n{self.name}: {self.doing}\n")


@contextlib.contextmanager
def _stop_on_signals(doing: str = _Stop.DETECT):
    import threading

    stop = _Stop(doing)
    if threading.current_thread() is not threading.main_thread():  # only the main thread may
        yield stop
        return
    previous = {signum: signal.signal(signum, stop.handle) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def cmd_train(args) -> int:
    """``--out`` is written once, when the training has finished; SIGTERM or Ctrl-C stops at the
    next step, leaves ``--out`` as it was and says where the best epoch so far is (status 143/130)."""
    from .model import get_detector, select_device
    from .training import TrainingCancelled, TrainingOptions, fine_tune, load_labelled_images, validation_summary

    items, notes = load_labelled_images(args.images, args.labels)
    for note in notes:
        _say(f"note: {note}")
    detector = get_detector(args.model, "cpu", backbone_weights=args.backbone_weights)
    options = TrainingOptions(
        epochs=args.epochs,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        trainable_blocks=None if args.trainable_blocks < 0 else args.trainable_blocks,
        val_fraction=args.val_fraction,
        patience=args.patience,
        scale_jitter=args.scale_jitter,
        seed=args.seed,
        device=args.device,
    )
    n_boxes = sum(len(it.boxes) for it in items)
    _say(
        f"training {detector.config.backbone} from {detector.source or args.model} on {len(items)} images "
        f"({n_boxes} boxes, {sum(len(it.boxes) == 0 for it in items)} negatives); device: {select_device(args.device)}"
    )
    from tqdm.auto import tqdm

    bar = tqdm(total=None, desc="training", unit="step", disable=None, file=sys.stderr)

    def report(progress):
        if progress.kind == "note":
            _say(f"note: {progress.note}")
        elif progress.kind == "step":
            if bar.total != progress.steps * progress.epochs:
                bar.reset(total=progress.steps * progress.epochs)
            bar.update(1)
            bar.set_postfix(epoch=progress.epoch, loss=f"{progress.loss:.3f}")
        else:
            threshold = progress.history[-1].get("val_threshold") if progress.history else None
            extra = (
                ""
                if progress.val_f1 is None
                else (
                    f", validation F1 {progress.val_f1:.3f} (completeness {progress.val_completeness:.3f}, "
                    f"purity {progress.val_purity:.3f}" + (f", score >= {threshold:g})" if threshold else ")")
                )
            )
            part = f"{progress.part}, " if progress.part else ""
            _say(f"{part}epoch {progress.epoch}/{progress.epochs}: loss {progress.loss:.4f}{extra}")

    data = f"{len(items)} images ({n_boxes} boxes) from {', '.join(map(str, args.images))}; labels {args.labels}"
    with _stop_on_signals(
        "stopping at the next training step (the model file is written only when the training ends; Ctrl-C "
        "again to stop at once)"
    ) as stop:
        try:
            trained = fine_tune(
                detector,
                items,
                options,
                out=args.out,
                callback=report,
                should_stop=stop.is_set,
                data_description=data,
            )
        except TrainingCancelled as error:
            bar.close()
            print(f"stopped by {stop.name}: {error}", file=sys.stderr)
            return 128 + stop.signal
    bar.close()
    print(f"model written to {args.out} ({trained.provenance['epochs_run']} epochs; {validation_summary(trained)})")
    return 0


def cmd_evaluate(args) -> int:
    import json

    from .metrics import evaluate, plot_scores

    result = evaluate(
        args.truth, args.detections, score_threshold=args.score_threshold, rule=args.rule, iou_threshold=args.iou
    )
    table, at, ap = result["by_threshold"], result["at_threshold"], result["coco"]
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(
        f"at score >= {args.score_threshold:g}: completeness {at['completeness']:.3f}, purity {at['purity']:.3f}, "
        f"F1 {at['f1']:.3f} ({int(at['n_matched'])} matched of {int(at['n_truth'])} true clumps and "
        f"{int(at['n_detections'])} detections; rule {args.rule}"
        + (f", IoU >= {args.iou:g})" if args.rule == "iou" else ")")
    )
    print(f"COCO-style AP (class-agnostic): AP[.5:.95] {ap['ap']:.3f}, AP50 {ap['ap50']:.3f}")
    stem = str(args.detections).removesuffix(".csv")
    plot = Path(args.plot) if args.plot else Path(stem + ".metrics.png")
    plot_scores(table, plot, title=f"{Path(args.detections).name} vs {Path(args.truth).name}")
    print(f"plot written to {plot}")
    out = Path(args.json) if args.json else Path(stem + ".metrics.json")
    from .atomic import atomic_path

    with atomic_path(out) as tmp:
        tmp.write_text(
            json.dumps(
                {
                    "truth": str(args.truth),
                    "detections": str(args.detections),
                    **result,
                    "by_threshold": table.to_dict(orient="records"),
                },
                indent=2,
            )
        )
    print(f"metrics written to {out}")
    return 0


def cmd_info(args) -> int:
    from .cutouts import CutoutCatalogError, with_catalog_wcs
    from .io import ImageReadError, find_images, read_image

    failed = 0
    for path, name in find_images(args.paths):
        try:
            image = read_image(path)
            with_sky = with_catalog_wcs(image, name, args.catalog)
            print(with_sky.describe() + (f" (from {args.catalog.path})" if with_sky is not image else ""))
        except (ImageReadError, CutoutCatalogError) as error:
            print(f"error: {error}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def cmd_demo(args) -> int:
    """The main job on bundled data, offline: simulate, add the real sample, detect, draw, score."""
    import pandas as pd
    from PIL import Image

    from .detections import images_list_path, write_detections
    from .inference import iter_detections
    from .io import find_images, read_image
    from .model import get_detector
    from .plotting import save_boxes_png
    from .samples import hubble_image
    from .simulate import write_dataset

    if args.napari:
        return _demo_in_napari()
    out = Path(args.out)
    truth = write_dataset(out / "simulated", n=args.n, seed=2024)
    real = out / "real" / "hubble_xdf_crop.png"
    real.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(hubble_image().composite).save(real)
    paths = [p for p, _ in find_images([out / "simulated"])] + [real]
    names = [p.relative_to(out).as_posix() for p in paths]
    detector = get_detector(args.model, "auto")
    threshold = detector.score_threshold if args.score_threshold is None else args.score_threshold
    _say(
        f"model: {detector.source} ({detector.model_id}); device: "
        f"{next(detector.network.parameters()).device}; score threshold {threshold:g}"
    )
    tables, images = [], []
    for path, result in zip(paths, iter_detections(paths, detector, names=names, score_threshold=threshold)):
        tables.append(result.table)
        images.append(result.images_row())
        png = save_boxes_png(read_image(path), result.table, out / "png" / (Path(result.name).name + ".png"))
        print(f"{result.name}: {len(result.table)} clumps -> {png}")
    csv = write_detections(pd.concat(tables, ignore_index=True), out / "detections.csv", pd.DataFrame(images))
    print(f"detections: {csv} (images list: {images_list_path(csv)})")
    from .detections import read_detections
    from .metrics import scores_table

    found = read_detections(csv)
    found["image"] = found.image.str.removeprefix("simulated/")
    simulated = [n.removeprefix("simulated/") for n in names if n.startswith("simulated/")]
    row = scores_table(read_detections(truth), found, thresholds=[threshold], images=simulated).iloc[0]
    print(
        f"on the {len(simulated)} simulated images (truth known): completeness {row.completeness:.2f}, "
        f"purity {row.purity:.2f} at score >= {threshold:g}"
    )
    return 0


def _demo_in_napari() -> int:
    """Open napari with the simulated sample, the real sample and the detection widget."""
    import napari

    from ._detect_widget import DetectionWidget

    viewer = napari.Viewer(title="napari-clumps demo")
    viewer.open_sample("napari-clumps", "simulated_galaxy")
    viewer.open_sample("napari-clumps", "hubble_xdf")
    widget = DetectionWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Detect clumps")
    widget.images.value = [layer for layer in widget.images.choices]
    napari.run()
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line too (docs/contracts.md), with where to find help."""

    def error(self, message):
        self.exit(2, f"error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _number(kind, low=None, high=None, *, low_open=False, high_open=False):
    """An argparse type: ``kind`` (int or float), finite, within the bounds given."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or below or above:
            if high is None:
                need = f"{'above' if low_open else 'at least'} {low:g}"
            elif low is None:
                need = f"{'below' if high_open else 'at most'} {high:g}"
            else:
                need = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"{text} is not {need}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


_POSITIVE_INT = _number(int, 1)
_COUNT = _number(int, 0)
_POSITIVE = _number(float, 0, low_open=True)
_SCORE = _number(float, 0, 1)
_IOU = _number(float, 0, 1, low_open=True)
_FRACTION = _number(float, 0, 1, high_open=True)


def _cutout_catalog(text: str):
    """An argparse type: a readable cutout catalogue (:mod:`napari_clumps.cutouts`), so that a bad
    one is a usage error before any work."""
    from .cutouts import CutoutCatalogError, read_cutout_catalog

    try:
        return read_cutout_catalog(text)
    except CutoutCatalogError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


_cutout_catalog.__name__ = "cutout catalogue"  # argparse names the type in some messages

#: Help of --catalog (detect and info).
_CATALOG_HELP = (
    "table (CSV, ECSV, FITS) of the images' centre RA/Dec and pixel scale (and orientation), which gives "
    "JPEG/PNG cutouts sky coordinates; files with a WCS of their own keep it (docs/user-guide.md)"
)


def build_parser() -> argparse.ArgumentParser:
    """The parser; every default comes from the core library (none is typed here twice)."""
    from . import __version__
    from .distributed import DEFAULT_CHUNK_SIZE
    from .inference import DEFAULT_BATCH_SIZE, DEFAULT_NMS_IOU
    from .metrics import DEFAULT_IOU, MATCH_RULES
    from .model import DEFAULT_MODEL, DEVICES, PAPER_SCORE_THRESHOLD
    from .scale import DEFAULT_SEEING_ARCSEC
    from .training import TrainingOptions

    training = TrainingOptions()

    parser = _Parser(prog="napari-clumps", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"napari-clumps {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    # --debug after the command too: SUPPRESS keeps the subcommand from resetting it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    simulate = commands.add_parser("simulate", parents=[common], help="write simulated clumpy galaxies with truth")
    simulate.add_argument("outdir", type=Path)
    simulate.add_argument("--n", type=_POSITIVE_INT, default=10, help="number of galaxies (default 10)")
    simulate.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    simulate.set_defaults(run=cmd_simulate)

    detect = commands.add_parser("detect", parents=[common], help="detect clumps in images or folders of images")
    detect.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    detect.add_argument(
        "--model", default=DEFAULT_MODEL, help="model file or packaged model name (default: %(default)s)"
    )
    detect.add_argument(
        "--out",
        type=Path,
        default=Path("detections.csv"),
        help="catalogue to write, in the format of its extension: .csv (the contract; rows are added as images "
        "finish), .ecsv, .fits or .parquet (with units and provenance; rows stream to the .csv beside it and "
        "the file is written from it when the run ends); its images list is <name>.images.csv "
        "(default detections.csv)",
    )
    detect.add_argument(
        "--regions",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write a DS9 region file per image, DIR/<image name>.reg (sub-folders mirrored; sky "
        "coordinates where the image has a celestial WCS), as images finish",
    )
    detect.add_argument(
        "--resume",
        action="store_true",
        help="continue --out: skip the images already in its images list, add the others (those that "
        "failed are tried again); without it, --out is replaced",
    )
    detect.add_argument(
        "--score-threshold",
        type=_SCORE,
        default=None,
        help="keep detections scoring at least this (default: the model's recommended "
        f"threshold, {PAPER_SCORE_THRESHOLD:g} for models without one)",
    )
    detect.add_argument(
        "--nms-iou", type=_IOU, default=DEFAULT_NMS_IOU, help="class-agnostic NMS IoU (%(default)s, as in the paper)"
    )
    detect.add_argument(
        "--batch-size", type=_POSITIVE_INT, default=DEFAULT_BATCH_SIZE, help="network inputs per batch (%(default)s)"
    )
    detect.add_argument(
        "--num-workers",
        type=_COUNT,
        default=0,
        help="processes that read (decode) images while the network runs (default 0: read between batches); "
        "reading is a small part of a run, so it gains little (docs/benchmarks/batch_run.md)",
    )
    detect.add_argument("--device", default="auto", choices=DEVICES, help="(on a cluster: each worker's)")
    cluster = detect.add_mutually_exclusive_group()
    cluster.add_argument(
        "--workers",
        type=_POSITIVE_INT,
        default=None,
        metavar="N",
        help="run on a local Dask cluster of N worker processes (needs napari-clumps[dask])",
    )
    cluster.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run on the Dask cluster whose scheduler is at ADDRESS (tcp://host:8786); the workers must "
        "read the images and the model at the same paths",
    )
    detect.add_argument(
        "--chunk-size",
        type=_POSITIVE_INT,
        default=DEFAULT_CHUNK_SIZE,
        help="images per task with --workers or --scheduler (default %(default)s)",
    )
    detect.add_argument(
        "--keep-off-host",
        action="store_true",
        help="also report detections off the central (host) galaxy: field stars, neighbours",
    )
    detect.add_argument(
        "--psf-fwhm",
        type=_POSITIVE,
        default=None,
        metavar="PX",
        help="PSF FWHM of the images in pixels; they are resampled to the model's training PSF",
    )
    detect.add_argument(
        "--pixel-scale",
        type=_POSITIVE,
        default=None,
        metavar="ARCSEC",
        help="pixel scale of the images in arcsec/pixel (with --seeing) when the PSF FWHM is "
        "not given; default: from FITS headers, else no resampling",
    )
    detect.add_argument(
        "--seeing",
        type=_POSITIVE,
        default=None,
        metavar="ARCSEC",
        help=f"seeing FWHM in arcsec used with --pixel-scale (default {DEFAULT_SEEING_ARCSEC:g})",
    )
    detect.add_argument("--catalog", type=_cutout_catalog, default=None, metavar="FILE", help=_CATALOG_HELP)
    detect.set_defaults(run=cmd_detect)

    train = commands.add_parser("train", parents=[common], help="train or fine-tune a detector on labelled images")
    train.add_argument("--images", nargs="+", required=True, help="image files or folders; all count as fully labelled")
    train.add_argument("--labels", type=Path, required=True, help="labels CSV in the detections format (score ignored)")
    train.add_argument("--out", type=Path, required=True, help="model file to write (.safetensors)")
    train.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="base: built-in architecture, model file or packaged model (default: %(default)s)",
    )
    train.add_argument(
        "--backbone-weights",
        default=None,
        help="for a built-in architecture: weights file, Zoobot .ckpt, 'hub' or 'none' (from scratch)",
    )
    train.add_argument("--epochs", type=_POSITIVE_INT, default=training.epochs, help="(default %(default)s)")
    train.add_argument(
        "--lr",
        type=_POSITIVE,
        default=training.learning_rate,
        help="peak learning rate of the one-cycle schedule (default %(default)s)",
    )
    train.add_argument("--batch-size", type=_POSITIVE_INT, default=training.batch_size, help="(default %(default)s)")
    train.add_argument(
        "--trainable-blocks",
        type=_number(int, -1),
        default=training.trainable_blocks,
        help="encoder stages to train from the deepest; 0 freezes it, -1 trains all (default %(default)s)",
    )
    train.add_argument(
        "--val-fraction",
        type=_FRACTION,
        default=training.val_fraction,
        help="images held out to validate and calibrate the threshold; under 20 images, 3-fold "
        "cross-validation instead; 0: no validation (default %(default)s)",
    )
    train.add_argument(
        "--patience",
        type=_COUNT,
        default=training.patience,
        help="early stop after this many epochs without a better validation F1 (0: never)",
    )
    train.add_argument(
        "--scale-jitter",
        type=_FRACTION,
        default=training.scale_jitter,
        help="random rescaling by up to this fraction (default %(default)s)",
    )
    train.add_argument("--seed", type=int, default=training.seed)
    train.add_argument("--device", default=training.device, choices=DEVICES)
    train.set_defaults(run=cmd_train)

    evaluate = commands.add_parser(
        "evaluate", parents=[common], help="completeness, purity and F1 of detections against truth"
    )
    evaluate.add_argument("--truth", type=Path, required=True)
    evaluate.add_argument("--detections", type=Path, required=True)
    evaluate.add_argument("--rule", choices=MATCH_RULES, default=MATCH_RULES[0])
    evaluate.add_argument("--iou", type=_IOU, default=DEFAULT_IOU, help="IoU needed for a match (rule iou)")
    evaluate.add_argument(
        "--score-threshold",
        type=_SCORE,
        default=PAPER_SCORE_THRESHOLD,
        help="threshold of the summary line (default %(default)s)",
    )
    evaluate.add_argument("--json", default=None, help="JSON to write (default DETECTIONS.metrics.json)")
    evaluate.add_argument("--plot", default=None, help="plot to write (default DETECTIONS.metrics.png)")
    evaluate.set_defaults(run=cmd_evaluate)

    info = commands.add_parser("info", parents=[common], help="read images and print what was read")
    info.add_argument("paths", nargs="+", help="image files or folders")
    info.add_argument("--catalog", type=_cutout_catalog, default=None, metavar="FILE", help=_CATALOG_HELP)
    info.set_defaults(run=cmd_info)
    demo = commands.add_parser("demo", parents=[common], help="run the main job on bundled data (offline)")
    demo.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (default demo_output)")
    demo.add_argument("--n", type=_POSITIVE_INT, default=4, help="simulated galaxies (default 4)")
    demo.add_argument("--model", default=DEFAULT_MODEL, help="model (default: %(default)s)")
    demo.add_argument("--score-threshold", type=_SCORE, default=None, help="default: the model's")
    demo.add_argument(
        "--napari", action="store_true", help="open napari with the samples and the detection widget instead"
    )
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv=None) -> int:
    import shlex

    parser = build_parser()
    args = parser.parse_args(argv)
    # the provenance of catalogues
    args.command_line = shlex.join(["napari-clumps", *map(str, sys.argv[1:] if argv is None else argv)])
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # one line for users; the traceback with --debug
        if args.debug:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
