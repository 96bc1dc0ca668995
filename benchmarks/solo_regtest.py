"""Solo mining on the pinned regtest node: blocks per second, and how fast a new tip
becomes a clean job through each tier (polling, GBT long-poll, ZMQ).

    .venv/bin/python benchmarks/solo_regtest.py [--blocks 200] [--tips 20]

Prints figures; it is not a pass/fail test. The node makes the competing tips itself
(generatetoaddress); for the ZMQ tier this script publishes bitcoind's 3-frame
hashblock message right after, since bcoin has no ZMQ.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import zmq

from miner.chain.address import address_to_script
from miner.config import Config, LogConfig, MiningConfig, NodeConfig
from miner.modes.solo import SoloMiner
from miner.metrics import Metrics
from miner.node.regtest import RegtestNode
from miner.node.rpc import NodeRPC
from miner.work.gbt import GBTSettings, GBTWorkSource
from miner.work.journal import Journal
from miner.work.submit import BlockSubmitter


def blocks_per_second(node: RegtestNode, workdir: Path, blocks: int, threads: int) -> tuple[float, int]:
    config = Config(node=NodeConfig(url=node.rpc_url, user=node.auth.user, password=node.auth.password,
                                    poll_interval=0.5),
                    mining=MiningConfig(address=node.new_address("bech32"), threads=threads, blocks=blocks,
                                        journal=str(workdir / "bench-journal.jsonl")),
                    log=LogConfig(status_interval=3600))
    miner = SoloMiner(config, metrics=Metrics(), out=open(os.devnull, "w"))
    t0 = time.perf_counter()
    asyncio.run(miner.run())
    return miner.stats.accepted / (time.perf_counter() - t0), miner.stats.accepted


async def tip_latencies(node: RegtestNode, workdir: Path, tier: str, tips: int) -> list[float]:
    script = address_to_script(node.new_address("bech32"), node.network_name)
    pub, zmq_url, seq = None, None, 0
    if tier == "zmq":
        pub = zmq.Context.instance().socket(zmq.PUB)
        zmq_url = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
    settings = GBTSettings(payout_script=script, poll_interval=0.5 if tier == "poll" else 3600.0,
                           longpoll=tier == "longpoll", zmq_url=zmq_url)
    rpc = NodeRPC(node.rpc_url, node.auth, timeout=30)
    latencies = []
    with Journal(workdir / f"tips-{tier}.jsonl") as journal:
        source = GBTWorkSource(rpc, BlockSubmitter(rpc, journal), settings)
        jobs = source.jobs()
        task = asyncio.create_task(source.run())
        try:
            await asyncio.wait_for(source.ready.wait(), 30)
            await asyncio.sleep(0.5)  # subscribers connected, long-poll parked
            for _ in range(tips):
                tip = (await asyncio.to_thread(node.mine_with_node, 1))[0]
                t0 = time.perf_counter()
                if pub is not None:
                    pub.send_multipart([b"hashblock", bytes.fromhex(tip), seq.to_bytes(4, "little")])
                    seq += 1
                while (await asyncio.wait_for(jobs.__anext__(), 10)).prev_hash_hex_display != tip:
                    pass
                latencies.append(time.perf_counter() - t0)
                await asyncio.sleep(0.2)  # the next tip lands at a random point of the poll cycle
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await jobs.aclose()
            if pub is not None:
                pub.close(0)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=200, help="blocks to mine for the blocks/s figure")
    parser.add_argument("--tips", type=int, default=20, help="node-made tips per tier")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: every CPU)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gridminer-bench-") as tmp, RegtestNode(persistent=False) as node:
        node.start()
        workdir = Path(tmp)
        rate, accepted = blocks_per_second(node, workdir, args.blocks, args.threads)
        print(f"regtest ({node.kind}): {accepted} blocks accepted, {rate:.1f} blocks/s "
              f"(template, hash, journal fsync, submitblock per block)")
        print(f"new tip -> clean job, over {args.tips} node-made tips (ms):")
        for tier in ("poll", "longpoll", "zmq"):
            ms = sorted(1000 * x for x in asyncio.run(tip_latencies(node, workdir, tier, args.tips)))
            p90 = ms[min(len(ms) - 1, int(0.9 * len(ms)))]
            print(f"  {tier:9s} median {statistics.median(ms):7.1f}  p90 {p90:7.1f}  max {ms[-1]:7.1f}")


if __name__ == "__main__":
    main()
