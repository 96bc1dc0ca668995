"""Found blocks while the node is down: what retrying costs, and how fast a stop is.

N blocks are found (journaled, fsynced) while the node's RPC port refuses connections
(a real NodeRPC to a closed loopback port); the submitter keeps them waiting for S
seconds with its default backoff (0.25 s doubling to 10 s); then every submission is
cancelled, as a SIGTERM's wind-down does. Prints: time to journal the N blocks, then,
over the outage, submitblock attempts, process CPU seconds and CPU share, RSS growth,
and the time from cancel to every submission gone.

    .venv/bin/python benchmarks/submit_outage.py [--blocks 2000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import tempfile
import time
from pathlib import Path

from miner.metrics import Metrics
from miner.node.regtest import free_port
from miner.node.rpc import NodeRPC, RPCAuth
from miner.work.journal import Journal
from miner.work.submit import BlockSubmitter
from miner.work.job import Solution
from miner.work.template import job_from_template

TEMPLATE = Path(__file__).resolve().parent.parent / "tests" / "data" / "gbt_bcoin_regtest_height1.json"
PAYOUT_SCRIPT = bytes.fromhex("0014") + bytes(range(20))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def solved_blocks(n: int):
    """n (job, solution) pairs, each a different valid regtest block on the same tip."""
    job = job_from_template(json.loads(TEMPLATE.read_text()), payout_script=PAYOUT_SCRIPT, job_id="1", clean=True)
    out = []
    for i in range(n):
        extranonce = i.to_bytes(job.extranonce_size, "big")
        header = job.header(extranonce)
        nonce = next(x for x in range(1 << 16) if header.with_nonce(x).meets_target(job.target))
        out.append((job, Solution(job.job_id, extranonce, job.ntime, nonce, job.version)))
    return out


async def run(blocks: int, seconds: float) -> dict:
    found = solved_blocks(blocks)
    metrics = Metrics()
    rpc = NodeRPC(f"http://127.0.0.1:{free_port()}/", RPCAuth("u", "p"), metrics=metrics)
    with tempfile.TemporaryDirectory() as tmp, Journal(Path(tmp) / "journal.jsonl") as journal:
        submitter = BlockSubmitter(rpc, journal, metrics)
        rss0, started = rss_mb(), time.monotonic()
        tasks = [asyncio.create_task(submitter.submit(job, solution)) for job, solution in found]
        while len(journal.pending()) < blocks:
            await asyncio.sleep(0.01)
        journaled_s = time.monotonic() - started
        calls0 = metrics.registry.get_sample_value("gridminer_rpc_calls_total", {"method": "submitblock"}) or 0
        cpu0, t0 = time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
        calls = (metrics.registry.get_sample_value("gridminer_rpc_calls_total", {"method": "submitblock"}) or 0) - calls0
        rss1 = rss_mb()
        stop0 = time.monotonic()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stop_s = time.monotonic() - stop0
        pending = len(journal.pending())
    rpc.close()
    return {"blocks": blocks, "journaled_s": journaled_s, "outage_s": wall, "submitblock_calls": calls,
            "calls_per_s": calls / wall, "cpu_s": cpu, "cpu_share": cpu / wall, "rss_growth_mb": rss1 - rss0,
            "cancel_to_done_s": stop_s, "left_pending": pending}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    r = asyncio.run(run(args.blocks, args.seconds))
    if args.json:
        print(json.dumps(r))
        return
    print(f"{r['blocks']} blocks found while the node is down: journaled in {r['journaled_s']:.1f} s")
    print(f"over {r['outage_s']:.1f} s of outage: {r['submitblock_calls']:.0f} submitblock attempts "
          f"({r['calls_per_s']:.1f}/s), {r['cpu_s']:.2f} CPU s ({100 * r['cpu_share']:.1f} % of one core), "
          f"RSS +{r['rss_growth_mb']:.1f} MB since the first block")
    print(f"cancel -> every submission gone: {r['cancel_to_done_s']:.3f} s; {r['left_pending']} left pending "
          "in the journal")


if __name__ == "__main__":
    main()
