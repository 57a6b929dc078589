"""Command-line interface. It only parses arguments and calls the public Python API."""

from __future__ import annotations

import argparse
import sys

import smoothcompress


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smoothcompress",
        description="Smooth training and SVD compression of neural networks without fine-tuning.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {smoothcompress.__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
