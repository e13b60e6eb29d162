"""Command line: ``python -m bioexp.data.synth ptbxl --out data/ptbxl-synth --records 2000``.

One subcommand per data set, so later generators only add a parser and a handler.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

from bioexp.data.synth.ptbxl import generate_ptbxl


def _ptbxl(args: argparse.Namespace) -> str:
    path = generate_ptbxl(args.out, args.records, args.seed, args.hr, args.overwrite, workers=args.workers)
    rates = "100 Hz and 500 Hz" if args.hr else "100 Hz"
    return f"wrote {args.records} synthetic PTB-XL records ({rates}) to {path}"


def _cardiac_us(args: argparse.Namespace) -> str:
    from bioexp.data.synth.cardiac_us import generate_cardiac_us  # imports torch: only when asked for

    path = generate_cardiac_us(args.out, args.patients, args.transitions, args.size, args.seed, args.overwrite,
                               args.composition, args.angle_unit)
    return (f"wrote {args.patients} synthetic cardiac ultrasound patients ({args.size} px frames, {args.composition} "
            f"labels in {args.angle_unit}) to {path}")


def _csi(args: argparse.Namespace) -> str:
    from bioexp.data.synth.csi import generate_csi

    path = generate_csi(args.out, args.images, args.seed, args.size, args.ungradable, args.overwrite)
    return f"wrote {args.images} synthetic chest X-rays (NIfTI, {args.size} px) and labels.csv to {path}"


def _vitaldb(args: argparse.Namespace) -> str:
    from bioexp.data.synth.vitaldb import generate_vitaldb

    path = generate_vitaldb(args.out, args.cases, args.seed, args.minutes, args.overwrite)
    return f"wrote {args.cases} synthetic VitalDB cases (.vital, ECG/PPG/ART at 500 Hz, {args.minutes:g} min) to {path}"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _generator(commands: argparse._SubParsersAction, name: str, help: str,
               handler: Callable[[argparse.Namespace], str]) -> argparse.ArgumentParser:
    """A subcommand with the options every generator shares: ``--out``, ``--seed``, ``--overwrite``."""
    sub = commands.add_parser(name, help=help)
    sub.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    sub.add_argument("--seed", type=int, default=0, help="random seed; same seed, same output (default 0)")
    sub.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    sub.set_defaults(handler=handler)
    return sub


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bioexp.data.synth", description="Write a synthetic data set in its real on-disk format."
    )
    commands = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    ptbxl = _generator(commands, "ptbxl", "synthetic PTB-XL 1.0.3 (12-lead ECG, 10 s)", _ptbxl)
    ptbxl.add_argument("--records", type=_positive, default=2000, help="number of ECGs (default 2000)")
    ptbxl.add_argument("--hr", action="store_true", help="also write the 500 Hz records500 folder")
    ptbxl.add_argument("--workers", type=_positive, default=None, help="processes (default: all CPUs)")
    cardiac = _generator(commands, "cardiac_us", "synthetic echo probe-guidance transitions (Cardiac Dreamer)",
                         _cardiac_us)
    cardiac.add_argument("--patients", type=_positive, default=24, help="patients, one folder each (default 24)")
    cardiac.add_argument("--transitions", type=_positive, default=40, help="mean transitions per patient (default 40)")
    cardiac.add_argument("--size", type=_positive, default=224, help="frame size in pixels (default 224)")
    cardiac.add_argument("--composition", choices=("additive", "se3"), default="additive",
                         help="label convention: additive 6-vectors as the public data (default) or se3 transforms")
    cardiac.add_argument("--angle-unit", choices=("deg", "rad"), default="deg", help="rotation unit (default deg)")
    csi = _generator(commands, "csi", "synthetic chest X-rays with per-zone congestion scores (CSI-Predictor)", _csi)
    csi.add_argument("--images", type=_positive, default=600, help="number of images (default 600)")
    csi.add_argument("--size", type=_positive, default=256, help="image size in pixels (default 256)")
    csi.add_argument("--ungradable", type=float, default=0.08, help="share of ungradable zones (default 0.08)")
    vitaldb = _generator(commands, "vitaldb", "synthetic VitalDB .vital cases (ECG + PPG + ART, 500 Hz)", _vitaldb)
    vitaldb.add_argument("--cases", type=_positive, default=40, help="number of cases (default 40)")
    vitaldb.add_argument("--minutes", type=float, default=5.0, help="length of each case (default 5)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; expected failures are one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        message = args.handler(args)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{message} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
