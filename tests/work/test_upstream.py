"""UpstreamWorkSource: what it knows about the jobs it published."""

import asyncio
from dataclasses import replace

from miner.metrics import Metrics
from miner.stratum.client import ClientJob, PoolFailover, PoolURL
from miner.work.upstream import UpstreamWorkSource
from tests.work.support import bcoin_template, job_for


def _client_job(job, epoch=1):
    return ClientJob(job=job, share_target=1 << 240, difficulty=1.0, extranonce1=b"\x01\x02\x03\x04",
                     extranonce2_size=8, version_mask=0, epoch=epoch)


def test_a_job_handed_on_as_a_clean_copy_is_still_known():
    # Two notifies back to back (a clean one on a new tip, then an update): a subscriber
    # that had not read the first gets the second as a copy marked clean. The source must
    # still recognise it, or agents and proxies would drop the newest job.
    async def scenario():
        source = UpstreamWorkSource(PoolFailover([PoolURL.parse("stratum+tcp://127.0.0.1:1")], "w", "x"),
                                    metrics=Metrics())
        subscription = source.jobs()
        first = job_for(bcoin_template(), job_id="a")
        second = replace(job_for(bcoin_template(), job_id="b"), clean=False)
        source._on_job(_client_job(first))
        source._on_job(_client_job(second))
        received = await asyncio.wait_for(subscription.__anext__(), 1)
        assert received.job_id == "b" and received.clean and received is not source.current
        assert source.info(received) is source.current_info
        assert source.info(replace(received, job_id="zz")) is None
        assert source.info(replace(received, ntime=received.ntime + 1)) is None

    asyncio.run(scenario())
