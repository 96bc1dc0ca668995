"""BlockSubmitter against a fake node: journal first, retries with backoff, answers, restarts."""

from __future__ import annotations

import asyncio
import json

import pytest

from miner.metrics import Metrics
from miner.work.journal import Journal

from .support import FakeClock, FakeNode, bcoin_template, fake_hash, job_for, rpc, solve, template_on

from miner.work.submit import (  # noqa: E402  (after support: it provides miner.node.rpc)
    BlockSubmitter,
    SubmitOutcome,
    reason_label,
    result_from_answer,
    result_from_error,
)


def solved(extranonce_byte: int = 0, prev: str | None = None, *, valid: bool = True):
    job = job_for(bcoin_template() if prev is None else template_on(prev), job_id=f"j{extranonce_byte}")
    solution = solve(job, bytes([extranonce_byte]) * 8, want_valid=valid)
    return job, solution, job.block(solution)


def blocks_total(metrics: Metrics, stage: str) -> float:
    return metrics.registry.get_sample_value("gridminer_blocks_total", {"stage": stage}) or 0.0


def rejects(metrics: Metrics, reason: str) -> float:
    return metrics.registry.get_sample_value("gridminer_block_rejects_total", {"reason": reason}) or 0.0


def pending_gauge(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("gridminer_journal_pending_blocks")


def make(tmp_path, node, **kwargs):
    journal = Journal(tmp_path / "blocks.jsonl")
    metrics = Metrics()
    clock = FakeClock()
    return BlockSubmitter(node, journal, metrics, clock=clock, **kwargs), journal, metrics, clock


def test_accepted(tmp_path):
    job, solution, block = solved()

    async def main():
        submitter, journal, metrics, clock = make(tmp_path, FakeNode())
        outcome = await submitter.submit(job, solution)
        return submitter, journal, metrics, clock, outcome

    submitter, journal, metrics, clock, outcome = asyncio.run(main())
    assert outcome == SubmitOutcome(block.hash_hex_display(), "accepted", 1, height=1)
    assert outcome.accepted and outcome.journaled
    assert submitter._rpc.submitted_hex() == [block.serialize().hex()]
    entry = journal.get(block.hash_hex_display())
    assert entry.results == ("accepted",) and entry.final and entry.block == block.serialize()
    assert entry.job_id == job.job_id and entry.height == 1
    assert entry.prev_hash_hex_display == bcoin_template()["previousblockhash"]
    assert [blocks_total(metrics, s) for s in ("found", "submitted", "accepted", "rejected", "stale")] \
        == [1, 1, 1, 0, 0]
    assert pending_gauge(metrics) == 0
    assert clock.sleeps == []


def test_journal_is_written_before_the_first_submit_attempt(tmp_path):
    job, solution, block = solved()
    path = tmp_path / "blocks.jsonl"
    seen = []

    def look_at_journal(method, params):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        found = [r for r in records if r["type"] == "found"]
        seen.append((method, [r["hash"] for r in found], [r["block"] for r in found] == [params[0]]))

    async def main():
        journal = Journal(path)
        submitter = BlockSubmitter(FakeNode(on_call=look_at_journal), journal, clock=FakeClock())
        return await submitter.submit(job, solution)

    assert asyncio.run(main()).accepted
    assert seen == [("submitblock", [block.hash_hex_display()], True)]


def test_retries_node_unavailable_with_doubling_backoff_to_the_cap(tmp_path):
    job, solution, block = solved()
    failures = [rpc.NodeUnavailable(None, "connection refused", "submitblock") for _ in range(6)]

    async def main():
        node = FakeNode(failures)
        submitter, journal, metrics, clock = make(tmp_path, node, retry_max_delay=1.0)
        gauge_while_failing = []
        node.on_call = lambda *_: gauge_while_failing.append(pending_gauge(metrics))
        outcome = await submitter.submit(job, solution)
        return node, journal, metrics, clock, outcome, gauge_while_failing

    node, journal, metrics, clock, outcome, gauge = asyncio.run(main())
    assert outcome.result == "accepted" and outcome.attempts == 7
    assert clock.sleeps == [0.25, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert len(node.submitted_hex()) == 7 and set(node.submitted_hex()) == {block.serialize().hex()}
    # One non-final record for the outage, not one per retry.
    assert journal.get(block.hash_hex_display()).results == ("unavailable", "accepted")
    assert gauge == [1] * 7 and pending_gauge(metrics) == 0
    assert blocks_total(metrics, "submitted") == 1 and blocks_total(metrics, "accepted") == 1


def test_warming_up_codeless_errors_and_client_bugs_are_retried_too(tmp_path):
    job, solution, block = solved()
    script = [rpc.NodeWarmingUp(-28, "Loading block index...", "submitblock"),
              RuntimeError("bug in the transport"),
              rpc.NodeUnavailable(None, "timeout", "submitblock"),
              rpc.RPCError(None, "HTTP 503", "submitblock"),
              None]

    async def main():
        submitter, journal, _, clock = make(tmp_path, FakeNode(script))
        return journal, clock, await submitter.submit(job, solution)

    journal, clock, outcome = asyncio.run(main())
    assert outcome.accepted and outcome.attempts == 5
    assert clock.sleeps == [0.25, 0.5, 1.0, 2.0]
    assert journal.get(block.hash_hex_display()).results == ("warming-up", "accepted")


ANSWERS = [
    # (what the node does, journal result, accepted, reject label)
    (None, "accepted", True, None),
    ("duplicate", "duplicate", True, None),
    ("high-hash", "high-hash", False, "high-hash"),
    ("bad-txnmrklroot", "bad-txnmrklroot", False, "bad-txnmrklroot"),
    ("inconclusive", "inconclusive", False, "inconclusive"),
    ("duplicate-invalid", "duplicate-invalid", False, "duplicate-invalid"),
    ("bad-blk-sigops, out-of-bounds SigOpCount", "bad-blk-sigops, out-of-bounds SigOpCount", False,
     "bad-blk-sigops"),
    ("", "rejected", False, "rejected"),
    (5, "unexpected-answer 5", False, "unexpected-answer"),
    (rpc.RPCVerifyRejected(-26, "bad-cb-height", "submitblock"), "bad-cb-height", False, "bad-cb-height"),
    (rpc.RPCVerifyError(-25, "bad-prevblk", "submitblock"), "bad-prevblk", False, "bad-prevblk"),
    (rpc.RPCVerifyError(-25, "", "submitblock"), "verify-error", False, "verify-error"),
    (rpc.RPCVerifyAlreadyInChain(-27, "block already in chain", "submitblock"), "duplicate", True, None),
    (rpc.RPCError(-22, "Block decode failed", "submitblock"), "rpc-error -22: Block decode failed", False,
     "rpc-error"),
]


@pytest.mark.parametrize(("answer", "result", "accepted", "label"), ANSWERS,
                         ids=[str(a[1])[:30] for a in ANSWERS])
def test_answer_mapping(tmp_path, answer, result, accepted, label):
    job, solution, block = solved()

    async def main():
        submitter, journal, metrics, _ = make(tmp_path, FakeNode([answer]))
        return journal, metrics, await submitter.submit(job, solution)

    journal, metrics, outcome = asyncio.run(main())
    assert (outcome.result, outcome.accepted, outcome.attempts) == (result, accepted, 1)
    entry = journal.get(block.hash_hex_display())
    assert entry.final_result == result and not journal.pending()
    assert blocks_total(metrics, "accepted") == (1 if accepted else 0)
    assert blocks_total(metrics, "rejected") == (0 if accepted else 1)
    if label is not None:
        assert rejects(metrics, label) == 1


def test_pure_mappings():
    assert result_from_answer(None) == "accepted"
    assert result_from_answer("  high-hash\n") == "high-hash"
    # bcoin prefixes its reasons: "rejected: duplicate" is BIP22's "duplicate", i.e. accepted.
    assert result_from_answer("rejected: duplicate") == "duplicate"
    assert result_from_answer("rejected: bad-prevblk") == "bad-prevblk"
    assert len(result_from_answer("x" * 1000)) == 200
    assert result_from_error(rpc.RPCVerifyAlreadyInChain(-27, "", "submitblock")) == "duplicate"
    assert reason_label("Bad-TxnMrklRoot") == "bad-txnmrklroot"
    assert reason_label("rpc-error -1: whatever") == "rpc-error"
    assert reason_label("!!!") == "other"
    assert reason_label("x" * 100) == "x" * 48


def test_block_failing_local_checks_is_journaled_and_still_submitted(tmp_path, caplog):
    job, solution, block = solved(valid=False)  # a nonce that misses the target

    async def main():
        node = FakeNode(["high-hash"])
        submitter, journal, metrics, _ = make(tmp_path, node)
        return node, journal, metrics, await submitter.submit(job, solution)

    node, journal, metrics, outcome = asyncio.run(main())
    assert outcome.local_problems and outcome.local_problems[0].startswith("high-hash")
    assert outcome.result == "high-hash" and not outcome.accepted
    assert node.submitted_hex() == [block.serialize().hex()]
    results = journal.get(block.hash_hex_display()).results
    assert results[0].startswith("local-check-failed: high-hash") and results[1:] == ("high-hash",)
    assert "FAILS LOCAL CHECKS" in caplog.text
    assert rejects(metrics, "high-hash") == 1


def test_cancellation_leaves_the_block_pending_for_the_next_start(tmp_path):
    job, solution, block = solved()
    path = tmp_path / "blocks.jsonl"

    async def first_run():
        node = FakeNode(default=rpc.NodeUnavailable(None, "connection refused", "submitblock"))
        journal = Journal(path)
        submitter = BlockSubmitter(node, journal, clock=FakeClock())
        task = asyncio.create_task(submitter.submit(job, solution))
        while len(node.calls) < 3:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert submitter._locks == {}
        journal.close()

    async def second_run():
        journal = Journal(path)
        assert [e.block_hash_hex_display for e in journal.pending()] == [block.hash_hex_display()]
        metrics = Metrics()
        node = FakeNode()
        submitter = BlockSubmitter(node, journal, metrics, clock=FakeClock())
        assert pending_gauge(metrics) == 1
        outcomes = await submitter.resubmit_pending(job.prev_hash_hex_display)
        return journal, node, metrics, outcomes

    asyncio.run(first_run())
    journal, node, metrics, outcomes = asyncio.run(second_run())
    assert [(o.block_hash_hex_display, o.result) for o in outcomes] == [(block.hash_hex_display(), "accepted")]
    assert node.submitted_hex() == [block.serialize().hex()]
    assert journal.pending() == [] and pending_gauge(metrics) == 0


def test_resubmit_pending_extends_tip_vs_stale(tmp_path):
    tip = fake_hash("tip")
    on_tip = solved(1, tip)
    on_old = solved(2, fake_hash("old tip"))
    is_tip = solved(3, fake_hash("parent"))  # neither extends nor is the tip
    answered = solved(4, tip)

    async def main():
        journal = Journal(tmp_path / "blocks.jsonl")
        for job, _, block in (on_tip, on_old, is_tip, answered):
            journal.record_found(block.serialize(), block_hash_hex_display=block.hash_hex_display(),
                                 prev_hash_hex_display=job.prev_hash_hex_display, height=1, job_id=job.job_id)
        journal.record_result(answered[2].hash_hex_display(), "accepted", final=True)
        node = FakeNode()
        metrics = Metrics()
        submitter = BlockSubmitter(node, journal, metrics, clock=FakeClock())
        outcomes = await submitter.resubmit_pending(tip)
        outcomes += await submitter.resubmit_pending(is_tip[2].hash_hex_display().upper())
        return journal, node, metrics, outcomes

    journal, node, metrics, outcomes = asyncio.run(main())
    # First pass (tip): on_tip resubmitted and accepted; on_old and is_tip do not extend it.
    # The second pass finds nothing pending: is_tip was already marked stale by the first.
    assert [(o.block_hash_hex_display, o.result, o.attempts, o.height) for o in outcomes] == [
        (on_tip[2].hash_hex_display(), "accepted", 1, 1),
        (on_old[2].hash_hex_display(), "stale", 0, 1),
        (is_tip[2].hash_hex_display(), "stale", 0, 1),
    ]
    assert node.submitted_hex() == [on_tip[2].serialize().hex()]
    assert journal.get(on_old[2].hash_hex_display()).final_result == "stale"
    assert journal.pending() == []
    assert blocks_total(metrics, "stale") == 2 and blocks_total(metrics, "accepted") == 1


def test_resubmit_pending_resubmits_a_block_that_is_the_tip(tmp_path):
    job, _, block = solved(3, fake_hash("parent"))

    async def main():
        journal = Journal(tmp_path / "blocks.jsonl")
        journal.record_found(block.serialize(), block_hash_hex_display=block.hash_hex_display(),
                             prev_hash_hex_display=job.prev_hash_hex_display, height=1, job_id=job.job_id)
        node = FakeNode(["duplicate"])
        submitter = BlockSubmitter(node, journal, clock=FakeClock())
        return await submitter.resubmit_pending(block.hash_hex_display())

    (outcome,) = asyncio.run(main())
    assert outcome.result == "duplicate" and outcome.accepted


def test_same_block_submitted_concurrently_goes_to_the_node_once(tmp_path):
    job, solution, block = solved()

    async def main():
        node = FakeNode()
        node.gate = asyncio.Event()
        submitter, journal, metrics, _ = make(tmp_path, node)
        tasks = [asyncio.create_task(submitter.submit(job, solution)) for _ in range(3)]
        while not node.calls:
            await asyncio.sleep(0.001)
        for _ in range(20):
            await asyncio.sleep(0)
        node.gate.set()
        outcomes = await asyncio.gather(*tasks)
        # Submitting it again later does not bother the node either.
        outcomes.append(await submitter.submit(job, solution))
        return node, journal, metrics, outcomes

    node, journal, metrics, outcomes = asyncio.run(main())
    assert len(node.calls) == 1
    assert sorted(o.attempts for o in outcomes) == [0, 0, 0, 1]
    assert all(o.result == "accepted" for o in outcomes)
    assert journal.get(block.hash_hex_display()).results == ("accepted",)
    assert blocks_total(metrics, "found") == 1 and blocks_total(metrics, "accepted") == 1


def test_different_blocks_are_submitted_in_parallel(tmp_path):
    a, b = solved(1), solved(2)

    async def main():
        node = FakeNode()
        node.gate = asyncio.Event()
        submitter, journal, _, _ = make(tmp_path, node)
        tasks = [asyncio.create_task(submitter.submit(job, sol)) for job, sol, _ in (a, b)]
        while node.in_flight < 2:
            await asyncio.sleep(0.001)
        node.gate.set()
        return node, journal, await asyncio.gather(*tasks)

    node, journal, outcomes = asyncio.run(main())
    assert node.max_in_flight == 2
    assert [o.result for o in outcomes] == ["accepted", "accepted"]
    assert {e.block_hash_hex_display for e in journal.entries()} == {a[2].hash_hex_display(),
                                                                      b[2].hash_hex_display()}


class BrokenJournal(Journal):
    def record_found(self, *args, **kwargs):
        raise OSError(28, "No space left on device")


def test_a_broken_journal_does_not_stop_the_submission(tmp_path, caplog):
    job, solution, block = solved()

    async def main():
        journal = BrokenJournal(tmp_path / "blocks.jsonl")
        node = FakeNode([rpc.NodeUnavailable(None, "down", "submitblock"), None])
        submitter = BlockSubmitter(node, journal, clock=FakeClock())
        return node, journal, await submitter.submit(job, solution)

    node, journal, outcome = asyncio.run(main())
    assert outcome.accepted and not outcome.journaled
    assert node.submitted_hex() == [block.serialize().hex()] * 2
    assert journal.entries() == []
    assert "could not journal block" in caplog.text and block.serialize().hex() in caplog.text


def test_real_sleep_path_with_tiny_delays(tmp_path):
    job, solution, _ = solved()

    async def main():
        node = FakeNode([rpc.NodeUnavailable(None, "down", "submitblock")] * 3)
        submitter = BlockSubmitter(node, Journal(tmp_path / "blocks.jsonl"),
                                   retry_initial_delay=0.001, retry_max_delay=0.002)
        return await submitter.submit(job, solution)

    assert asyncio.run(main()).attempts == 4


def test_bad_retry_settings():
    with pytest.raises(ValueError):
        BlockSubmitter(FakeNode(), None, retry_initial_delay=2.0, retry_max_delay=1.0)


@pytest.mark.parametrize("confirmations,result", [(3, "accepted"), (-1, "stale")])
def test_resubmit_pending_recognises_a_block_already_buried_in_the_chain(tmp_path, confirmations, result):
    # Accepted before a crash, then built upon: it does not extend the tip any more, but it
    # is ours and in the chain (confirmations >= 1), not stale. A side-chain block (-1) is.
    job, _, block = solved(5, fake_hash("an ancestor"))

    async def main():
        journal = Journal(tmp_path / "blocks.jsonl")
        journal.record_found(block.serialize(), block_hash_hex_display=block.hash_hex_display(),
                             prev_hash_hex_display=job.prev_hash_hex_display, height=7, job_id=job.job_id)
        node = FakeNode([{"hash": block.hash_hex_display(), "confirmations": confirmations}])
        outcomes = await BlockSubmitter(node, journal, clock=FakeClock()).resubmit_pending(fake_hash("tip"))
        return node, outcomes, journal.get(block.hash_hex_display())

    node, (outcome,), entry = asyncio.run(main())
    assert (outcome.result, outcome.attempts) == (result, 0)
    assert entry.final and entry.final_result == result
    assert node.submitted_hex() == [], "a buried or stale block is never sent again"
