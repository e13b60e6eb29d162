"""Command line: ``python -m bioexp.data.synth ptbxl --out data/ptbxl-synth --records 2000``.

One subcommand per data set, so later generators only add a parser and a handler.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from bioexp.data.synth.ptbxl import generate_ptbxl


def _ptbxl(args: argparse.Namespace) -> str:
    path = generate_ptbxl(args.out, args.records, args.seed, args.hr, args.overwrite, workers=args.workers)
    rates = "100 Hz and 500 Hz" if args.hr else "100 Hz"
    return f"wrote {args.records} synthetic PTB-XL records ({rates}) to {path}"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bioexp.data.synth", description="Write a synthetic data set in its real on-disk format."
    )
    commands = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    ptbxl = commands.add_parser("ptbxl", help="synthetic PTB-XL 1.0.3 (12-lead ECG, 10 s)")
    ptbxl.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    ptbxl.add_argument("--records", type=_positive, default=2000, help="number of ECGs (default 2000)")
    ptbxl.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    ptbxl.add_argument("--hr", action="store_true", help="also write the 500 Hz records500 folder")
    ptbxl.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    ptbxl.add_argument("--workers", type=_positive, default=None, help="processes (default: all CPUs)")
    ptbxl.set_defaults(handler=_ptbxl)
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
