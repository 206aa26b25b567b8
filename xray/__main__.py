"""Command line: `python -m xray SUBCOMMAND ...` (predict, evaluate, users, ...).

Each subcommand has an `_add_<name>(subparsers)` function that declares its arguments and sets `func`,
which calls into the `xray` modules; the logic lives there, not here.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="python -m xray", description="Chest X-ray decision support tools.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_predict(subparsers)
    return parser


def _add_predict(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help="classify image files or folders")
    p.add_argument("paths", nargs="+", help="image/DICOM files or folders (searched recursively)")
    p.add_argument("--model", default=None, help="model name (default: XRAY_DEFAULT_MODEL)")
    p.add_argument("--cam", metavar="DIR", default=None, help="write a Grad-CAM overlay PNG per image to DIR")
    p.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    p.add_argument("--csv", metavar="FILE", default=None, help="also write the results as CSV ('-' for stdout)")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from xray.batch import run_predict_command

    return run_predict_command(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run the subcommand; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    from xray.errors import XrayError

    try:
        return int(args.func(args) or 0)
    except XrayError as exc:
        # Expected failures (unknown model, unreadable input...) get their message, not a traceback.
        logging.getLogger("xray").error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
