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
                           description="Hash rate of every kernel path this CPU can run, which one is "
                                       "chosen and why, the chosen path on all cores, same-run references "
                                       "(hashlib loop, single-stream SHA-256, minerd when on PATH), JIT "
                                       "compile and cached load times.")
    bench.add_argument("--seconds", type=_positive_float, default=10.0,
                       help="time spent measuring rates (default 10; compile timing comes on top)")
    bench.add_argument("--threads", type=_positive_int, default=None,
                       help="threads for the all-core figure (default: every CPU this process may use)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--asm-stats", action="store_true",
                       help="also compile the lane loop afresh and count its vector instructions")
    bench.add_argument("--no-compile", action="store_true",
                       help="skip the cold-compile and cached-load timing (two fresh processes per path)")
    bench.add_argument("--no-minerd", action="store_true",
                       help="do not run minerd as a reference even when it is on PATH")
    run = sub.add_parser("run", help="mine: solo on a node, as a pool agent, or as a proxy for rigs",
                         formatter_class=argparse.RawDescriptionHelpFormatter, description=RUN_DESCRIPTION)
    from miner.sched.backtest import add_arguments as add_backtest_arguments

    add_backtest_arguments(sub.add_parser(
        "backtest", help="replay real power prices through the scheduling policies",
        description="Simulate each site hour by hour on recorded prices for always-on, the breakeven "
                    "threshold, threshold with hysteresis, gridminer's policy and the hindsight optimum; "
                    "print profit, energy, prices paid, uptime, starts, violations and the capture ratio."))
    from miner.fleet.cli import FLEET_DESCRIPTION, add_arguments as add_fleet_arguments

    add_fleet_arguments(sub.add_parser(
        "fleet", help="the fleet scheduler: desired state for every site agent over NATS JetStream",
        formatter_class=argparse.RawDescriptionHelpFormatter, description=FLEET_DESCRIPTION))
    run.add_argument("-c", "--config", metavar="FILE", help="TOML config file (see README: Configuration)")
    run.add_argument("--node", metavar="URL",
                     help="node RPC URL, http://HOST:PORT (node.url; default: start the pinned regtest node)")
    run.add_argument("--rpc-cookie", metavar="FILE", help="node's RPC cookie file, re-read when the node restarts (node.cookie_file; "
                          "default: none, user/password from the config or the environment)")
    run.add_argument("--zmq", metavar="URL", help="node's zmqpubhashblock (and zmqpubsequence) endpoint, tcp://HOST:PORT (node.zmq; default: "
                          "none, new tips by long-poll and polling)")
    run.add_argument("--address", metavar="ADDR", help="solo: payout address (mining.address; default with the "
                     "regtest node: a new address of its wallet)")
    run.add_argument("--threads", type=int, metavar="N", help="CPU hashing threads (mining.threads; default: "
                     "every CPU in solo and agent modes, 0 in proxy mode)")
    run.add_argument("--blocks", type=int, metavar="N",
                     help="solo: stop after N accepted blocks (mining.blocks; default 0: never)")
    run.add_argument("--journal", metavar="FILE", help="solo: found-block journal (mining.journal; default: one "
                     "per chain under ~/.local/share/gridminer/, or the started regtest node's datadir)")
    run.add_argument("--mode", choices=("solo", "agent", "proxy", "site"),
                     help="solo: mine on a node; agent: mine a stratum pool with a cgminer API; "
                          "proxy: rigs connect to our stratum server and mine the upstream pool; "
                          "site: a site agent driving one site's devices from the fleet bus "
                          "(mining.mode; default solo)")
    run.add_argument("--site", metavar="NAME", help="site mode: the site of the sites file this agent runs (bus.site)")
    run.add_argument("--bus", metavar="URL", help="site mode: the fleet bus, nats://HOST:PORT (bus.url; user in "
                     "bus.user, password from GRIDMINER_BUS_PASSWORD)")
    run.add_argument("--pool", metavar="URL[,URL...]",
                     help="agent/proxy (and site, to mine too): stratum+tcp://HOST:PORT pools in order of preference "
                          "(upstream.pools; no default)")
    run.add_argument("--user", metavar="NAME", help="agent/proxy: worker name, e.g. site.rig (upstream.user); "
                     "the pool password comes from the config or GRIDMINER_POOL_PASSWORD")
    run.add_argument("--api", metavar="HOST:PORT",
                     help="agent mode: cgminer-compatible API (agent.api; default 127.0.0.1:4028; off); "
                          "its token comes from the config or GRIDMINER_AGENT_TOKEN")
    run.add_argument("--stratum", metavar="HOST:PORT",
                     help="stratum server for ASICs and rigs (stratum.listen; default 127.0.0.1:3333; off)")
    run.add_argument("--metrics", metavar="HOST:PORT",
                     help="Prometheus endpoint (metrics.listen; default 127.0.0.1:9108; off to disable)")
    run.add_argument("--sites", metavar="FILE",
                     help="sites TOML: schedule the local workers and the sites' devices by live power "
                          "price (sched.sites; see [sched] in the config; default: none, always on)")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                     help="log.level (default info)")
    return parser


RUN_DESCRIPTION = """\
Four modes, one daemon:

  solo   (default) getblocktemplate/submitblock on a node. Local CPU workers and rigs
         connected to our stratum server (--stratum) mine blocks paying --address. With
         no --node, the pinned regtest node is started and a new address of its wallet
         is used: `miner run` alone mines regtest blocks.
  agent  the CPU workers mine a stratum pool (--pool, --user); a cgminer-compatible API
         (--api) shows the rig and lets a fleet tool pause and resume it.
  proxy  rigs connect to our stratum server and mine the upstream pool's jobs, each in
         its own extranonce slice; their shares are checked here and forwarded.
  site   a site agent (--site NAME --sites FILE --bus URL): drives that site's devices
         to the level the fleet leader (miner fleet) writes for it on the bus, reports
         what they really do, and follows the site's fail_safe when the bus is gone.

With --sites FILE, solo, agent and proxy also run the power-price scheduler: it
curtails and resumes the local workers and the sites' devices (agents, ASICs) when the
price crosses breakeven. Credentials never come from here: RPC user/password from the config file or
GRIDMINER_RPC_USER / GRIDMINER_RPC_PASSWORD, the pool password from
GRIDMINER_POOL_PASSWORD, the agent token from GRIDMINER_AGENT_TOKEN, the bus password
from GRIDMINER_BUS_PASSWORD.
"""


def _run(args) -> int:
    import gc

    try:
        return _run_config(args)
    finally:
        # Exit at once: otherwise interpreter shutdown garbage-collects numba's compiled
        # objects, 2 s on a loaded machine, eating into the 5 s a stop may take.
        gc.freeze()


def _run_config(args) -> int:
    import logging

    from miner import config as cfg
    from miner import controller

    try:
        config = cfg.load(args.config, {
            "node": {"url": args.node, "cookie_file": args.rpc_cookie, "zmq": args.zmq},
            "mining": {"mode": args.mode, "address": args.address, "threads": args.threads,
                       "blocks": args.blocks, "journal": args.journal},
            "upstream": {"pools": args.pool.split(",") if args.pool else None, "user": args.user},
            "agent": {"api": args.api},
            "stratum": {"listen": args.stratum},
            "metrics": {"listen": args.metrics},
            "log": {"level": args.log_level},
            "sched": {"sites": args.sites},
            "bus": {"url": args.bus, "site": args.site},
        })
    except cfg.ConfigError as e:
        print(f"miner run: configuration error: {e}", file=sys.stderr)
        return 2
    # The status lines (Run._print in miner/modes/base.py) carry the same clock: one format on the terminal.
    logging.basicConfig(level=config.log.level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from kernels.paths import KernelUnavailable
    from miner.node.regtest import RegtestError

    try:
        return controller.run(config)
    except cfg.ConfigError as e:
        print(f"miner run: configuration error: {e}", file=sys.stderr)
        return 2
    except RegtestError as e:
        print(f"miner run: cannot start the regtest node: {e}\n"
              "  (install Node.js and npm, or give a node: miner run --node URL --address ADDR)", file=sys.stderr)
        return 1
    except KernelUnavailable as e:
        print(f"miner run: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        from miner import bench

        return bench.main(args)
    if args.command == "run":
        return _run(args)
    if args.command == "fleet":
        from miner.fleet.cli import run_cli as run_fleet_cli

        return run_fleet_cli(args)
    if args.command == "backtest":
        from miner.sched.backtest import run_cli

        return run_cli(args)
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
