"""How the solo run treats the node's answer to one of its blocks (SoloMiner._submit_one):
an inconclusive block (BIP22: valid, not on the best chain) is not a rejection and does
not reopen its tip; a rejected one does. The source and pool are stand-ins that record
what the run asks of them: the answers themselves are tested in tests/work/test_submit.py."""

from __future__ import annotations

import asyncio
import os

import pytest

from miner.config import Config
from miner.modes.solo import SoloMiner
from miner.metrics import Metrics
from miner.work.submit import SubmitOutcome
from tests.work.support import bcoin_template, job_for, solve


class AnsweringSource:
    def __init__(self, result: str) -> None:
        self.result = result

    async def submit(self, job, solution) -> SubmitOutcome:
        return SubmitOutcome("00" * 32, self.result, 1, height=job.height)


class RecordingPool:
    def __init__(self) -> None:
        self.reopened: list[bytes] = []

    def retry_tip(self, prev_hash_internal: bytes) -> None:
        self.reopened.append(prev_hash_internal)


@pytest.mark.parametrize(("result", "accepted", "rejected", "reopened"), [
    ("accepted", 1, 0, False),
    ("duplicate", 1, 0, False),
    ("inconclusive", 0, 0, False),
    ("duplicate-inconclusive", 0, 0, False),
    ("high-hash", 0, 1, True),
])
def test_inconclusive_is_neither_rejected_nor_a_reason_to_mine_the_tip_again(result, accepted, rejected, reopened):
    job = job_for(bcoin_template())
    solution = solve(job)
    miner = SoloMiner(Config(), metrics=Metrics(), out=open(os.devnull, "w"))
    pool = RecordingPool()
    asyncio.run(miner._submit_one(AnsweringSource(result), pool, job, solution))
    assert (miner.stats.accepted, miner.stats.rejected) == (accepted, rejected)
    assert pool.reopened == ([job.prev_hash_internal] if reopened else [])
