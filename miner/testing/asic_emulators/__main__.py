"""A fleet in its own process: python -m miner.testing.asic_emulators --luxos 100 ...

Prints one JSON line per miner ({"family", "ip"}), then {"ready": n}, and serves until
SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from miner.testing.asic_emulators.fleet import FAMILIES, serve_fleet
from miner.testing.asic_emulators.host import can_bind_low_ports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m miner.testing.asic_emulators",
                                     description="Serve emulated ASICs on loopback addresses (ports 80/4028) "
                                                 "until SIGINT/SIGTERM; prints one JSON line per miner.")
    for family in FAMILIES:
        parser.add_argument(f"--{family}", type=int, default=0, metavar="N", help=f"{family} miners")
    parser.add_argument("--password-env", metavar="VAR",
                        help="environment variable holding the miners' password (default: firmware default)")
    args = parser.parse_args(argv)
    if any(getattr(args, f) < 0 for f in FAMILIES):
        parser.error("miner counts must not be negative")
    counts = {f: getattr(args, f) for f in FAMILIES if getattr(args, f) > 0}
    if not counts:
        parser.error("give at least one --<family> N")
    if not can_bind_low_ports():
        print("cannot listen on port 80: run as root or grant CAP_NET_BIND_SERVICE", file=sys.stderr)
        return 2
    password = os.environ.get(args.password_env, "") if args.password_env else None
    if args.password_env and not password:
        parser.error(f"--password-env {args.password_env}: that environment variable is not set")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve_fleet(counts, password=password, announce=lambda line: print(line, flush=True), stop=stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
