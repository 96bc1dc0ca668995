"""The `miner` command."""

from __future__ import annotations

import argparse
import sys

from miner import __version__


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="miner", description="gridminer: a Bitcoin mining stack")
    parser.add_argument("--version", action="version", version=f"gridminer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bench = sub.add_parser("bench", help="measure the SHA-256d kernel on this machine",
                           description="Kernel hash rate per thread and on all cores, with same-run "
                                       "references (hashlib loop, single-stream SHA-256), JIT compile "
                                       "and cached load times.")
    bench.add_argument("--seconds", type=_positive_float, default=10.0,
                       help="time spent measuring rates (default 10; compile timing comes on top)")
    bench.add_argument("--threads", type=_positive_int, default=None,
                       help="threads for the all-core figure (default: every CPU this process may use)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--asm-stats", action="store_true",
                       help="also compile the lane loop afresh and count its vector instructions")
    bench.add_argument("--no-compile", action="store_true",
                       help="skip the cold-compile and cached-load timing (two fresh processes)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        from miner import bench

        return bench.main(args)
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
