"""`miner fleet`: the fleet scheduler, and `miner fleet keygen` for its signing key."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

FLEET_DESCRIPTION = """\
The fleet scheduler: prices, hashprice and the policy over every site of the sites file
(fleet coupling included), each site's decision written to the NATS JetStream bus as its
signed desired state; what each site agent reports is what the policy sees next. It never
talks to a device. Run several: one leads through a lease, the others stand by.

  miner fleet --sites SITES.toml --bus nats://HOST:PORT -c fleet.toml
  miner fleet keygen --out fleet.key      (then [bus] signing_key_file = "fleet.key";
                                           sites get the printed public key)

The bus password comes from GRIDMINER_BUS_PASSWORD only.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", metavar="FILE", help="TOML config with [sched], [bus], [metrics], [log]")
    parser.add_argument("--sites", metavar="FILE", help="sites TOML (sched.sites)")
    parser.add_argument("--bus", metavar="URL", help="NATS server(s), nats://HOST:PORT[,...] (bus.url)")
    parser.add_argument("--metrics", metavar="HOST:PORT",
                        help="Prometheus endpoint (metrics.listen; default 127.0.0.1:9108; off)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="log.level")
    sub = parser.add_subparsers(dest="fleet_command", metavar="keygen")
    keygen = sub.add_parser("keygen", help="write a new Ed25519 signing key for desired states",
                            description="Write a new Ed25519 private key (PEM, mode 0600) and print its "
                                        "public key for the sites' [bus] leader_public_key.")
    keygen.add_argument("--out", metavar="FILE", required=True, help="where to write the key (must not exist)")


def run_cli(args: argparse.Namespace) -> int:
    if args.fleet_command == "keygen":
        return keygen(Path(args.out))
    return run_fleet(args)


def keygen(out: Path) -> int:
    from miner.fleet.records import new_signing_key, public_key_hex, signing_key_pem

    key = new_signing_key()
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(f"miner fleet keygen: {out} exists; not overwriting a signing key", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"miner fleet keygen: cannot write {out}: {e.strerror}", file=sys.stderr)
        return 2
    with os.fdopen(fd, "wb") as f:
        f.write(signing_key_pem(key))
    print(f"wrote {out} (mode 0600)")
    print(f"leader_public_key = \"{public_key_hex(key)}\"")
    return 0


def run_fleet(args: argparse.Namespace) -> int:
    import asyncio
    import gc
    import logging

    from miner import config as cfg
    from miner.sched.sites import SitesError, load_sites

    try:
        config = cfg.load(args.config, {"sched": {"sites": args.sites}, "bus": {"url": args.bus},
                                        "metrics": {"listen": args.metrics}, "log": {"level": args.log_level}})
    except cfg.ConfigError as e:
        print(f"miner fleet: configuration error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log.level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if config.sched.sites is None:
        print("miner fleet: configuration error: give the sites file (--sites FILE or [sched] sites)",
              file=sys.stderr)
        return 2
    try:
        fleet = load_sites(config.sched.sites)
    except SitesError as e:
        print(f"miner fleet: {e}", file=sys.stderr)
        return 2
    from miner.fleet.scheduler import FleetRunner
    from miner.sched.scheduler import fleet_setting_problems

    from miner.sched.scheduler import hashprice_source_for

    problems = fleet_setting_problems(fleet, devices=False)
    try:
        hashprice_source_for(fleet.economics)
    except ValueError as e:
        problems.append(str(e))
    try:
        runner = FleetRunner(config, fleet)
    except ValueError as e:
        problems.append(str(e))
    if problems:
        print("miner fleet: configuration error:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    try:
        return asyncio.run(runner.run())
    except KeyboardInterrupt:
        return 130
    finally:
        gc.freeze()
