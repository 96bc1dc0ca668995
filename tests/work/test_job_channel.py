"""The latest-value job channel between a work source and its consumers."""

import asyncio

from miner.chain import bits_to_target, build_coinbase
from miner.work.gbt import JobChannel
from miner.work.job import Job


def job(job_id: str, clean: bool) -> Job:
    coinbase = build_coinbase(1, 50 * 10**8, bytes.fromhex("51"), extranonce_size=8)
    return Job(job_id, bytes(32), 0x20000000, 0x207FFFFF, 0, bits_to_target(0x207FFFFF), coinbase, (), clean)


def test_a_subscriber_sees_jobs_published_before_its_first_read_and_the_current_one():
    async def scenario():
        channel = JobChannel()
        channel.publish(job("1", True))
        sub = channel.subscribe()  # after a publish: starts with the current job
        channel.publish(job("2", False))  # before the first read: must not be lost
        first = await asyncio.wait_for(sub.__anext__(), 1)
        await sub.aclose()
        channel.publish(job("3", True))  # nobody listening: no error
        return first

    first = asyncio.run(scenario())
    assert first.job_id == "2"
    assert first.clean, "job 1 (a new tip) was skipped: its clean flag must carry over"
