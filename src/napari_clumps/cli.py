"""``napari-clumps`` command line (also ``python -m napari_clumps``).

Errors are one line naming the file and the reason, with a non-zero exit status; ``--debug``
shows the traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _progress(iterable, desc: str, total: int | None = None):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit="img", disable=None, file=sys.stderr)


def expand_paths(paths) -> list[tuple[Path, str]]:
    """Files given, and supported images found (recursively, sorted) in folders given.

    Returns ``(path, name)`` pairs; ``name`` is the path as given, or relative to its folder.
    """
    from .io import is_supported_path

    found = []
    for given in paths:
        given = Path(given)
        if given.is_dir():
            for path in sorted(p for p in given.rglob("*") if p.is_file() and is_supported_path(p)):
                found.append((path, path.relative_to(given).as_posix()))
        else:
            found.append((given, str(given)))
    return found


def cmd_simulate(args) -> int:
    from .simulate import write_dataset

    truth = write_dataset(args.outdir, n=args.n, seed=args.seed,
                          progress=lambda it: _progress(it, "simulating", args.n))
    print(f"wrote {args.n} galaxies (FITS + JPEG) to {args.outdir}; truth: {truth}")
    return 0


def cmd_info(args) -> int:
    from .io import ImageReadError, read_image

    failed = 0
    for path, _ in expand_paths(args.paths):
        try:
            print(read_image(path).describe())
        except ImageReadError as error:
            print(f"error: {error}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def cmd_demo(args) -> int:
    """The main job on bundled data, offline: simulate galaxies, add the real sample, read them all."""
    from PIL import Image

    from ._sample_data import hubble_image
    from .simulate import write_dataset

    out = Path(args.out)
    truth = write_dataset(out / "simulated", n=args.n, seed=2024)
    real = out / "real" / "hubble_xdf_crop.png"
    real.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(hubble_image().composite).save(real)
    print(f"simulated {args.n} galaxies into {out / 'simulated'} (truth: {truth})")
    print(f"real sample: {real}")
    return cmd_info(argparse.Namespace(paths=[out / "simulated", out / "real"]))


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="napari-clumps", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"napari-clumps {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    simulate = commands.add_parser("simulate", help="write simulated clumpy galaxies with truth")
    simulate.add_argument("outdir", type=Path)
    simulate.add_argument("--n", type=int, default=10, help="number of galaxies (default 10)")
    simulate.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    simulate.set_defaults(run=cmd_simulate)

    info = commands.add_parser("info", help="read images and print what was read")
    info.add_argument("paths", nargs="+", help="image files or folders")
    info.set_defaults(run=cmd_info)
    demo = commands.add_parser("demo", help="run the main job on bundled data (offline)")
    demo.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (default demo_output)")
    demo.add_argument("--n", type=int, default=4, help="simulated galaxies (default 4)")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
