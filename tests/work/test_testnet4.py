"""testnet4 (BIP94) and testnet3: the 20-minute rule and the timewarp rule, on templates and jobs,
in stratum share checks, and in GBTWorkSource's refresh timer.

The chain data is real where it exists: testnet4 block 40000 (tests/data, electrumx) is
the parent, so the next template is at height 40001 with that block's bits 0x1954fa04 as
the normal difficulty and its time as prev_time. The parent's median time past is not in
the vector; MTP below is a plausible constructed value. 40320 = 20 * 2016 is a real
first-of-period height. Templates have Core's shape, with curtime/bits/mintime computed by
Core's own rules (node/miner.cpp UpdateTime and GetMinimumTime, pow.cpp
GetNextWorkRequired), reimplemented below independently of miner/work/rules.py as the
oracle the jobs are checked against.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miner.chain.networks import Network, get_network
from miner.chain.target import DIFF1_TARGET, bits_to_target
from miner.metrics import Metrics
from miner.node.rpc import NodeRPC
from miner.stratum.shares import Reject, ShareBook, check_share
from miner.work.gbt import GBTSettings, GBTWorkSource, gbt_params
from miner.work.job import Job, Solution
from miner.work.journal import Journal
from miner.work.rules import (
    MAX_TIMEWARP_S,
    header_time_bounds,
    min_difficulty_threshold,
    needs_prev_time,
)
from miner.work.submit import BlockSubmitter
from miner.work.template import TemplateError
from tests.fakes import FakeClock
from tests.waiting import wait_until

from .fake_core import ChainTip, FakeCoreNode, TemplateContent
from .support import PAYOUT_SCRIPT, PROPERTY, job_for, load_json

TESTNET4 = get_network("testnet4")
TESTNET3 = get_network("testnet")
BLOCK_40000 = load_json("bitcoin_testnet4_40000.json")
PREV_HASH = BLOCK_40000["hash"]
PREV_TIME = BLOCK_40000["time"]  # 1723908842
NORMAL_BITS = int(BLOCK_40000["bits"], 16)  # 0x1954fa04
MIN_BITS = 0x1D00FFFF  # BIP94: "the minimum difficulty value (nBits = 0x1d00ffff)"
MTP = PREV_TIME - 1500  # constructed: block 40000's median time past is not in the vector
THRESHOLD = PREV_TIME + 1200  # "more than 20 minutes": min difficulty from THRESHOLD + 1
FIRST_OF_PERIOD = 20 * 2016  # 40320
# Core's default_witness_commitment for a template without transactions (bcoin's and
# Core's agree: sha256d(32 zero bytes || 32 zero bytes)).
EMPTY_COMMITMENT_SCRIPT = "6a24aa21a9ede2f61c3f71d1defd3fa999dfa36953755c690689799962b48bebd836974e8cf9"


# -- the oracle: Core's rules, written out again -----------------------------------------------


def core_required_bits(net: Network, *, height: int, prev_time: int, normal_bits: int, ntime: int) -> int:
    """pow.cpp GetNextWorkRequired for a block at height and time ntime."""
    if height % net.difficulty_adjustment_interval != 0 and net.pow_allow_min_difficulty:
        if ntime > prev_time + net.target_spacing_s * 2:
            return net.pow_limit_bits
    return normal_bits


def core_header_valid(net: Network, *, height: int, prev_time: int, mtp: int, normal_bits: int,
                      bits: int, ntime: int) -> bool:
    """validation.cpp ContextualCheckBlockHeader's time and bits checks."""
    if bits != core_required_bits(net, height=height, prev_time=prev_time, normal_bits=normal_bits, ntime=ntime):
        return False  # bad-diffbits
    if ntime <= mtp:
        return False  # time-too-old
    if net.enforce_bip94 and height % net.difficulty_adjustment_interval == 0 and ntime < prev_time - 600:
        return False  # time-timewarp-attack
    return True


def core_mintime(net: Network, *, height: int, prev_time: int, mtp: int, core29: bool = True) -> int:
    """GetMinimumTime (Core >= 29 applies the timewarp floor on every chain; older Core: MTP + 1)."""
    mintime = mtp + 1
    if core29 and height % net.difficulty_adjustment_interval == 0:
        mintime = max(mintime, prev_time - 600)
    return mintime


def template(net: Network = TESTNET4, *, node_time: int, height: int = 40001, prev_time: int = PREV_TIME,
             mtp: int = MTP, normal_bits: int = NORMAL_BITS, bits: int | None = None,
             mintime: int | None = None) -> dict:
    """A getblocktemplate answer as Core builds it at node_time (bits for its curtime)."""
    if mintime is None:
        mintime = core_mintime(net, height=height, prev_time=prev_time, mtp=mtp)
    curtime = max(mintime, node_time)
    if bits is None:
        bits = core_required_bits(net, height=height, prev_time=prev_time, normal_bits=normal_bits, ntime=curtime)
    return {
        "capabilities": ["proposal"], "version": 0x20000000, "rules": ["csv", "!segwit", "taproot"],
        "vbavailable": {}, "vbrequired": 0, "previousblockhash": PREV_HASH, "transactions": [],
        "coinbaseaux": {}, "coinbasevalue": 5_000_000_000, "longpollid": PREV_HASH + "7",
        "target": f"{bits_to_target(bits):064x}", "mintime": mintime,
        "mutable": ["time", "transactions", "prevblock"], "noncerange": "00000000ffffffff",
        "sigoplimit": 80000, "sizelimit": 4000000, "weightlimit": 4000000, "curtime": curtime,
        "bits": f"{bits:08x}", "height": height, "default_witness_commitment": EMPTY_COMMITMENT_SCRIPT,
    }


def allows(job: Job, ntime: int) -> bool:
    """Whether the job lets a worker or stratum client use this ntime."""
    return (job.min_time is None or ntime >= job.min_time) and (job.max_time is None or ntime <= job.max_time)


# -- the 20-minute rule --------------------------------------------------------------------------


def test_normal_template_caps_ntime_at_twenty_minutes():
    t = template(node_time=PREV_TIME + 600)
    job = job_for(t, network=TESTNET4, prev_time=PREV_TIME)
    assert job.bits == NORMAL_BITS and job.height == 40001
    assert job.ntime == PREV_TIME + 600
    assert job.min_time == MTP + 1
    assert job.max_time == THRESHOLD
    assert job.block(Solution(job.job_id, bytes(8), job.ntime, 0, job.version)).check() == []


def test_twenty_minutes_exactly_is_still_normal_difficulty():
    t = template(node_time=THRESHOLD)
    assert t["bits"] == f"{NORMAL_BITS:08x}"  # "more than 20 minutes": not yet
    job = job_for(t, network=TESTNET4, prev_time=PREV_TIME)
    assert (job.ntime, job.max_time) == (THRESHOLD, THRESHOLD)


def test_minimum_difficulty_template_floors_ntime_after_twenty_minutes():
    t = template(node_time=THRESHOLD + 1)
    assert t["bits"] == "1d00ffff"
    job = job_for(t, network=TESTNET4, prev_time=PREV_TIME)
    assert job.bits == MIN_BITS and job.target == DIFF1_TARGET
    assert job.min_time == THRESHOLD + 1 and job.max_time is None
    block = job.block(Solution(job.job_id, bytes(8), job.ntime, 0, job.version))
    assert block.check() == []
    assert core_header_valid(TESTNET4, height=40001, prev_time=PREV_TIME, mtp=MTP, normal_bits=NORMAL_BITS,
                             bits=block.header.bits, ntime=block.header.time)


def test_normal_bits_past_twenty_minutes_are_refused():
    """A node would never send this; mining it would only make bad-diffbits blocks."""
    t = template(node_time=THRESHOLD + 60, bits=NORMAL_BITS)
    with pytest.raises(TemplateError) as e:
        job_for(t, network=TESTNET4, prev_time=PREV_TIME)
    assert e.value.reason == "bits"
    assert "1d00ffff" in str(e.value)


def test_rolled_ntime_stays_on_the_templates_side():
    normal = job_for(template(node_time=PREV_TIME + 600), network=TESTNET4, prev_time=PREV_TIME,
                     ntime=PREV_TIME + 5000)
    assert normal.ntime == THRESHOLD
    minimum = job_for(template(node_time=THRESHOLD + 30), network=TESTNET4, prev_time=PREV_TIME,
                      ntime=PREV_TIME + 10)
    assert minimum.ntime == THRESHOLD + 1


def test_normal_difficulty_at_the_minimum_puts_no_bound():
    """While the normal bits are the pow limit (a young chain) both sides of 20 minutes agree."""
    for node_time in (PREV_TIME + 60, THRESHOLD + 60):
        job = job_for(template(node_time=node_time, normal_bits=MIN_BITS), network=TESTNET4, prev_time=PREV_TIME)
        assert job.bits == MIN_BITS and job.max_time is None
        assert header_time_bounds(TESTNET4, height=40001, bits=MIN_BITS, prev_time=PREV_TIME,
                                  curtime=PREV_TIME + 60).min_difficulty_from is None


def test_testnet3_has_the_twenty_minute_rule_too():
    job = job_for(template(TESTNET3, node_time=PREV_TIME + 60), network=TESTNET3, prev_time=PREV_TIME)
    assert job.max_time == THRESHOLD
    job = job_for(template(TESTNET3, node_time=THRESHOLD + 1), network=TESTNET3, prev_time=PREV_TIME)
    assert (job.bits, job.min_time) == (MIN_BITS, THRESHOLD + 1)


# -- the first block of a period: no 20-minute rule, BIP94 timewarp rule ------------------------


def test_first_block_of_a_period_keeps_its_bits_whatever_the_time():
    t = template(node_time=PREV_TIME + 5000, height=FIRST_OF_PERIOD)
    assert t["bits"] == f"{NORMAL_BITS:08x}"  # BIP94: "MUST use the actual network difficulty"
    job = job_for(t, network=TESTNET4, prev_time=PREV_TIME, ntime=PREV_TIME + 9000)
    assert job.max_time is None and job.ntime == PREV_TIME + 9000


def test_timewarp_floor_on_the_first_block_of_a_period():
    # A Core < 29 node's mintime is MTP + 1 only; the miner adds prev_time - 600 itself.
    old_mintime = core_mintime(TESTNET4, height=FIRST_OF_PERIOD, prev_time=PREV_TIME, mtp=MTP, core29=False)
    assert old_mintime < PREV_TIME - MAX_TIMEWARP_S
    t = template(node_time=PREV_TIME - 1000, height=FIRST_OF_PERIOD, mintime=old_mintime)
    job = job_for(t, network=TESTNET4, prev_time=PREV_TIME)
    assert job.min_time == PREV_TIME - 600
    assert job.ntime == PREV_TIME - 600  # curtime was below it
    rolled_back = job_for(t, network=TESTNET4, prev_time=PREV_TIME, ntime=PREV_TIME - 601)
    assert rolled_back.ntime == PREV_TIME - 600
    assert core_header_valid(TESTNET4, height=FIRST_OF_PERIOD, prev_time=PREV_TIME, mtp=MTP,
                             normal_bits=NORMAL_BITS, bits=job.bits, ntime=job.ntime)
    assert not core_header_valid(TESTNET4, height=FIRST_OF_PERIOD, prev_time=PREV_TIME, mtp=MTP,
                                 normal_bits=NORMAL_BITS, bits=job.bits, ntime=job.ntime - 1)


def test_timewarp_floor_only_on_the_first_block_and_only_under_bip94():
    old_mintime = MTP + 1
    mid_period = job_for(template(node_time=PREV_TIME - 1000, mintime=old_mintime), network=TESTNET4,
                         prev_time=PREV_TIME)
    assert mid_period.min_time == old_mintime
    testnet3 = job_for(template(TESTNET3, node_time=PREV_TIME - 1000, height=FIRST_OF_PERIOD, mintime=old_mintime),
                       network=TESTNET3, prev_time=PREV_TIME)
    assert testnet3.min_time == old_mintime


# -- property: the job's ntime window is exactly where Core accepts its bits ----------------------


@PROPERTY
@given(offset=st.integers(-1500, 4000),
       height=st.sampled_from([40001, FIRST_OF_PERIOD - 1, FIRST_OF_PERIOD, FIRST_OF_PERIOD + 1]),
       normal_bits=st.sampled_from([NORMAL_BITS, MIN_BITS]),
       core29=st.booleans(),
       net=st.sampled_from([TESTNET4, TESTNET3]))
def test_job_window_matches_cores_rules(offset, height, normal_bits, core29, net):
    mintime = core_mintime(net, height=height, prev_time=PREV_TIME, mtp=MTP, core29=core29)
    t = template(net, node_time=PREV_TIME + offset, height=height, normal_bits=normal_bits, mintime=mintime)
    job = job_for(t, network=net, prev_time=PREV_TIME)
    threshold = min_difficulty_threshold(net, PREV_TIME)
    candidates = {MTP, MTP + 1, PREV_TIME - 601, PREV_TIME - 600, PREV_TIME - 599, threshold - 1, threshold,
                  threshold + 1, threshold + 2, t["curtime"] - 1, t["curtime"], t["curtime"] + 1,
                  t["curtime"] + 5000, job.ntime}

    def valid(ntime: int) -> bool:
        return core_header_valid(net, height=height, prev_time=PREV_TIME, mtp=MTP, normal_bits=normal_bits,
                                 bits=job.bits, ntime=ntime)

    assert allows(job, job.ntime) and valid(job.ntime)
    # Deliberately narrower than consensus: min-difficulty bits that are also the normal
    # bits (floor at threshold + 1), testnet3's first block under Core >= 29's mintime.
    conservative = ((normal_bits == MIN_BITS and t["curtime"] > threshold)
                    or (not net.enforce_bip94 and core29 and height % 2016 == 0))
    for ntime in sorted(candidates):
        if allows(job, ntime):
            assert valid(ntime), (ntime, job)
        elif not conservative:
            assert not valid(ntime), (ntime, job)


def test_networks_without_the_rules_need_no_previous_time():
    assert needs_prev_time(TESTNET4) and needs_prev_time(TESTNET3)
    for name in ("mainnet", "signet", "regtest", "bcoin-regtest"):
        assert not needs_prev_time(get_network(name))
    regtest = get_network("regtest")
    # regtest has fPowAllowMinDifficultyBlocks but never retargets: every block has the
    # pow-limit bits already, so an hour-old parent changes nothing.
    bounds = header_time_bounds(regtest, height=5, bits=regtest.pow_limit_bits, prev_time=None, curtime=10**9)
    assert bounds.earliest is None and bounds.latest is None


def test_testnet4_without_the_previous_time_is_a_caller_error():
    with pytest.raises(ValueError, match="previous block's time"):
        job_for(template(node_time=PREV_TIME + 60), network=TESTNET4)


# -- stratum: rolled ntime on either side -----------------------------------------------------------


def _share(job: Job, ntime: int):
    book = ShareBook()
    book.issue(job, job_id="s1", share_target=(1 << 256) - 1, now=float(PREV_TIME))
    return check_share(book, job_id="s1", extranonce1=bytes(4), extranonce2=bytes(4), ntime=ntime, nonce=7,
                       version_bits=None, version_mask=0, now=float(PREV_TIME + 600))


def test_stratum_refuses_ntime_rolled_past_the_normal_difficulty():
    job = job_for(template(node_time=PREV_TIME + 600), network=TESTNET4, prev_time=PREV_TIME)
    assert _share(job, THRESHOLD).accepted
    assert _share(job, THRESHOLD + 1).reject is Reject.NTIME_OUT_OF_RANGE


def test_stratum_refuses_ntime_rolled_back_before_the_minimum_difficulty():
    job = job_for(template(node_time=THRESHOLD + 5), network=TESTNET4, prev_time=PREV_TIME)
    assert _share(job, THRESHOLD + 1).accepted
    assert _share(job, THRESHOLD).reject is Reject.NTIME_OUT_OF_RANGE


# -- GBTWorkSource: the refresh at prev_time + 20 minutes ----------------------------------------


class GatedClock(FakeClock):
    """A FakeClock whose sleeps wait for the test's go-ahead, so the test sees each job first."""

    def __init__(self, now: float = 1000.0) -> None:
        super().__init__(now)
        self.gate = asyncio.Semaphore(0)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await self.gate.acquire()
        self.now += seconds


def _settings() -> GBTSettings:
    # Only the timer may refresh: polling and periodic refreshes are out of the way.
    return GBTSettings(payout_script=PAYOUT_SCRIPT, poll_interval=3600, template_refresh=3600, longpoll=False)


async def _min_difficulty_switch(tmp_path, *, node_start: int, mtp: int) -> tuple[list[Job], GatedClock, FakeCoreNode]:
    clock = GatedClock()
    t0 = clock.now

    def node_clock() -> int:
        return node_start + int(clock.now - t0)

    tip = ChainTip(PREV_HASH, 40000, PREV_TIME, mtp, NORMAL_BITS)
    content = TemplateContent(default_witness_commitment=EMPTY_COMMITMENT_SCRIPT)
    jobs: list[Job] = []
    with FakeCoreNode("testnet4", tip, content, node_clock) as node, Journal(tmp_path / "j.jsonl") as journal:
        rpc = NodeRPC(node.url, node.auth, timeout=10)
        source = GBTWorkSource(rpc, BlockSubmitter(rpc, journal), _settings(), clock=clock)
        sub = source.jobs()
        task = asyncio.create_task(source.run())
        try:
            jobs.append(await asyncio.wait_for(sub.__anext__(), 10))
            fired = 0
            while jobs[-1].bits != MIN_BITS:
                await wait_until(lambda: len(clock.sleeps) == fired + 1, what="the min-difficulty timer")
                assert source.min_difficulty_refresh_in == clock.sleeps[-1]
                fired += 1
                clock.gate.release()
                # A refresh that brings nothing new makes no job; the timer is armed again.
                following = asyncio.ensure_future(sub.__anext__())
                await wait_until(lambda: following.done() or len(clock.sleeps) > fired, 10, "a job or a new timer")
                if following.done():
                    jobs.append(following.result())
                else:
                    following.cancel()
            assert source.min_difficulty_refresh_in is None  # nothing left to wait for
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await sub.aclose()
            rpc.close()
    return jobs, clock, node


def test_refresh_is_scheduled_for_twenty_minutes_after_the_parent(tmp_path):
    jobs, clock, node = asyncio.run(_min_difficulty_switch(tmp_path, node_start=PREV_TIME + 300, mtp=MTP))
    normal, minimum = jobs
    assert (normal.bits, normal.ntime, normal.max_time) == (NORMAL_BITS, PREV_TIME + 300, THRESHOLD)
    assert clock.sleeps == [THRESHOLD + 1 - (PREV_TIME + 300)]  # 901 s on the node's clock
    assert (minimum.bits, minimum.ntime, minimum.min_time, minimum.max_time) == \
        (MIN_BITS, THRESHOLD + 1, THRESHOLD + 1, None)
    assert minimum.prev_hash_hex_display == normal.prev_hash_hex_display == PREV_HASH
    assert minimum.clean  # same tip, but only the easy job is worth hashing now
    # testnet4 templates are asked with the segwit rule; the parent's time once per tip.
    assert all(params == [gbt_params(TESTNET4)] for m, params in node.calls if m == "getblocktemplate")
    assert node.methods().count("getblockheader") == 1
    assert node.methods().count("getblocktemplate") == 2


def test_refresh_waits_again_when_the_template_was_ahead_of_the_nodes_clock(tmp_path):
    """MTP + 1 above the node's clock: curtime = mintime runs ahead, so the first refresh
    still gets the normal bits and the timer is set again from the new curtime."""
    mtp = PREV_TIME + 400  # the parent's own time is below its median time past
    jobs, clock, _ = asyncio.run(_min_difficulty_switch(tmp_path, node_start=PREV_TIME + 300, mtp=mtp))
    # The early refresh brings nothing new (same tip, bits and transactions): no job for it.
    assert [j.bits for j in jobs] == [NORMAL_BITS, MIN_BITS]
    assert jobs[0].ntime == mtp + 1  # curtime = mintime, ahead of the node's PREV_TIME + 300
    assert clock.sleeps == [THRESHOLD + 1 - (mtp + 1), 101]  # then the node is at PREV_TIME + 1100
    assert jobs[1].clean


def test_no_timer_on_regtest(regtest_node):
    """On the real regtest node: the chain is read from the node, no parent time is fetched,
    no ntime cap is set and no min-difficulty timer is armed."""

    async def scenario() -> tuple[GBTWorkSource, Metrics]:
        metrics = Metrics()
        rpc = NodeRPC(regtest_node.rpc_url, regtest_node.auth, timeout=10, metrics=metrics)
        source = GBTWorkSource(rpc, submitter=None, settings=_settings(), metrics=metrics)
        try:
            await source.refresh(clean_if_new_tip=True, via="test")
        finally:
            rpc.close()
        return source, metrics

    source, metrics = asyncio.run(scenario())
    assert source.network is get_network("regtest")
    assert source.current is not None and source.current.max_time is None
    assert source.min_difficulty_refresh_in is None
    assert metrics.registry.get_sample_value("gridminer_rpc_calls_total", {"method": "getblockheader"}) is None
    assert metrics.registry.get_sample_value("gridminer_rpc_calls_total", {"method": "getblocktemplate"}) == 1


def test_periodic_refreshes_re_arm_the_timer_without_stopping_the_source(tmp_path):
    """Each refresh cancels and re-arms the min-difficulty timer; the source must go on
    (it once gathered the first timer with its loops, and its cancellation ended run())."""
    async def scenario():
        tip = ChainTip(PREV_HASH, 40000, PREV_TIME, MTP, NORMAL_BITS)
        content = TemplateContent(default_witness_commitment=EMPTY_COMMITMENT_SCRIPT)
        with FakeCoreNode("testnet4", tip, content, lambda: PREV_TIME + 300) as node, \
                Journal(tmp_path / "j.jsonl") as journal:
            rpc = NodeRPC(node.url, node.auth, timeout=10)
            settings = GBTSettings(payout_script=PAYOUT_SCRIPT, poll_interval=3600, template_refresh=0.2,
                                   longpoll=False)
            source = GBTWorkSource(rpc, BlockSubmitter(rpc, journal), settings)
            task = asyncio.create_task(source.run())
            try:
                await wait_until(lambda: node.methods().count("getblocktemplate") >= 4 or task.done(), timeout=10,
                                 what="four templates")
                assert not task.done(), "the work source stopped"
                assert source.min_difficulty_refresh_in is not None  # armed again for the normal job
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                rpc.close()

    asyncio.run(scenario())
