"""BlockSubmitter against a fake node: journal first, retries with backoff, answers, restarts."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from miner.metrics import Metrics
from miner.work.journal import Journal

from tests.waiting import wait_until

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
    # (what the node does, journal result, stage counted, reject label or None)
    (None, "accepted", "accepted", None),
    ("duplicate", "duplicate", "accepted", None),
    ("high-hash", "high-hash", "rejected", "high-hash"),
    ("bad-txnmrklroot", "bad-txnmrklroot", "rejected", "bad-txnmrklroot"),
    # BIP22: valid, but not on the node's best chain: its own result, never a rejection.
    ("inconclusive", "inconclusive", "inconclusive", None),
    ("duplicate-inconclusive", "duplicate-inconclusive", "inconclusive", None),
    ("rejected: inconclusive", "inconclusive", "inconclusive", None),
    ("duplicate-invalid", "duplicate-invalid", "rejected", "duplicate-invalid"),
    ("bad-blk-sigops, out-of-bounds SigOpCount", "bad-blk-sigops, out-of-bounds SigOpCount", "rejected",
     "bad-blk-sigops"),
    ("", "rejected", "rejected", "rejected"),
    (5, "unexpected-answer 5", "rejected", "unexpected-answer"),
    (rpc.RPCVerifyRejected(-26, "bad-cb-height", "submitblock"), "bad-cb-height", "rejected", "bad-cb-height"),
    (rpc.RPCVerifyError(-25, "bad-prevblk", "submitblock"), "bad-prevblk", "rejected", "bad-prevblk"),
    (rpc.RPCVerifyError(-25, "", "submitblock"), "verify-error", "rejected", "verify-error"),
    (rpc.RPCVerifyAlreadyInChain(-27, "block already in chain", "submitblock"), "duplicate", "accepted", None),
    (rpc.RPCError(-22, "Block decode failed", "submitblock"), "rpc-error -22: Block decode failed", "rejected",
     "rpc-error"),
]


@pytest.mark.parametrize(("answer", "result", "stage", "label"), ANSWERS,
                         ids=[str(a[0])[:30] for a in ANSWERS])
def test_answer_mapping(tmp_path, caplog, answer, result, stage, label):
    caplog.set_level(logging.INFO, logger="miner.work.submit")
    job, solution, block = solved()

    async def main():
        submitter, journal, metrics, _ = make(tmp_path, FakeNode([answer]))
        return journal, metrics, await submitter.submit(job, solution)

    journal, metrics, outcome = asyncio.run(main())
    assert (outcome.result, outcome.attempts) == (result, 1)
    assert (outcome.accepted, outcome.inconclusive, outcome.rejected) == \
        (stage == "accepted", stage == "inconclusive", stage == "rejected")
    entry = journal.get(block.hash_hex_display())
    assert entry.final_result == result and not journal.pending()
    for counted in ("accepted", "inconclusive", "rejected"):
        assert blocks_total(metrics, counted) == (1 if counted == stage else 0), counted
    total_rejects = sum(s.value for m in metrics.registry.collect() if m.name == "gridminer_block_rejects"
                        for s in m.samples if s.name.endswith("_total"))
    assert total_rejects == (1 if label is not None else 0)
    if label is not None:
        assert rejects(metrics, label) == 1
    answer_lines = [r for r in caplog.records if block.hash_hex_display() in r.getMessage()
                    and r.name == "miner.work.submit" and "found block" not in r.getMessage()]
    levels = {"accepted": logging.INFO, "inconclusive": logging.WARNING, "rejected": logging.ERROR}
    assert [r.levelno for r in answer_lines] == [levels[stage]]
    if stage == "inconclusive":
        assert "not on the node's best chain" in answer_lines[0].getMessage()


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


def test_resubmit_pending_recognises_a_block_that_is_the_tip_without_sending_it(tmp_path):
    job, _, block = solved(3, fake_hash("parent"))

    async def main():
        journal = Journal(tmp_path / "blocks.jsonl")
        journal.record_found(block.serialize(), block_hash_hex_display=block.hash_hex_display(),
                             prev_hash_hex_display=job.prev_hash_hex_display, height=1, job_id=job.job_id)
        node = FakeNode([1, block.hash_hex_display()])  # getblockcount, getblockhash 1
        return node, await BlockSubmitter(node, journal, clock=FakeClock()).resubmit_pending(block.hash_hex_display())

    node, (outcome,) = asyncio.run(main())
    assert outcome.result == "accepted" and outcome.accepted and outcome.attempts == 0
    assert node.calls == [("getblockcount", ()), ("getblockhash", (1,))]


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


@pytest.mark.parametrize("hash_at_height,result", [("ours", "accepted"), ("other", "stale")])
def test_resubmit_pending_recognises_a_block_already_buried_in_the_chain(tmp_path, hash_at_height, result):
    # Accepted before a crash, then built upon: it does not extend the tip any more, but it
    # is ours and in the chain (the node's block at its height), not stale. Anything else is.
    job, _, block = solved(5, fake_hash("an ancestor"))
    at_height = block.hash_hex_display() if hash_at_height == "ours" else fake_hash("theirs")

    async def main():
        journal = Journal(tmp_path / "blocks.jsonl")
        journal.record_found(block.serialize(), block_hash_hex_display=block.hash_hex_display(),
                             prev_hash_hex_display=job.prev_hash_hex_display, height=7, job_id=job.job_id)
        node = FakeNode([9, at_height])  # getblockcount, getblockhash 7
        outcomes = await BlockSubmitter(node, journal, clock=FakeClock()).resubmit_pending(fake_hash("tip"))
        return node, outcomes, journal.get(block.hash_hex_display())

    node, (outcome,), entry = asyncio.run(main())
    assert (outcome.result, outcome.attempts) == (result, 0)
    assert entry.final and entry.final_result == result
    assert node.submitted_hex() == [], "a buried or stale block is never sent again"
    assert node.calls == [("getblockcount", ()), ("getblockhash", (7,))]


@pytest.mark.parametrize("confirmations,result", [(3, "accepted"), (-1, "stale")])
def test_an_entry_without_a_height_is_judged_by_its_header(tmp_path, confirmations, result):
    job, _, block = solved(5, fake_hash("an ancestor"))

    async def main():
        journal = Journal(tmp_path / "blocks.jsonl")
        journal.record_found(block.serialize(), block_hash_hex_display=block.hash_hex_display(),
                             prev_hash_hex_display=job.prev_hash_hex_display, height=None, job_id=job.job_id)
        node = FakeNode([9, {"hash": block.hash_hex_display(), "confirmations": confirmations}])
        return await BlockSubmitter(node, journal, clock=FakeClock()).resubmit_pending(fake_hash("tip"))

    (outcome,) = asyncio.run(main())
    assert (outcome.result, outcome.attempts) == (result, 0)


# --- the raw block is journaled before the checks run --------------------------------------


def test_the_block_is_journaled_before_it_is_checked(tmp_path, monkeypatch):
    # The checks hash every transaction (0.14 s for a 1 MB block): a crash or a stop in
    # that time must not lose the block.
    from miner.chain.block import Block

    job, solution, block = solved()
    path = tmp_path / "blocks.jsonl"
    seen = []
    real_check = Block.check

    def check_looking_at_the_journal(self, *args, **kwargs):
        text = path.read_text() if path.exists() else ""
        seen.append(any(json.loads(line)["type"] == "found" for line in text.splitlines()))
        return real_check(self, *args, **kwargs)

    monkeypatch.setattr(Block, "check", check_looking_at_the_journal)

    async def main():
        return await BlockSubmitter(FakeNode(), Journal(path), clock=FakeClock()).submit(job, solution)

    assert asyncio.run(main()).accepted
    assert seen == [True]


# --- the node is down: one retry loop for every waiting block ------------------------------


def test_while_the_node_is_down_one_loop_retries_for_every_waiting_block(tmp_path):
    blocks = [solved(i) for i in range(40)]
    down = rpc.NodeUnavailable(None, "connection refused", "submitblock")

    async def main():
        node = FakeNode(default=down)
        journal, metrics = Journal(tmp_path / "blocks.jsonl"), Metrics()
        # The real clock, with tiny delays.
        submitter = BlockSubmitter(node, journal, metrics, retry_initial_delay=0.005, retry_max_delay=0.01)
        tasks = [asyncio.create_task(submitter.submit(job, sol)) for job, sol, _ in blocks]
        await wait_until(lambda: submitter.waiting_for_node == len(blocks), 30, "every block queued")
        calls_at_queue = len(node.calls)
        await wait_until(lambda: len(node.calls) >= calls_at_queue + 30, 30, "30 retries")
        assert all(item.raw is None for item in submitter._queue.values()), "bytes stay in the journal only"
        node.default = None  # the node is back
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        return node, journal, metrics, submitter, outcomes

    node, journal, metrics, submitter, outcomes = asyncio.run(main())
    assert [o.result for o in outcomes] == ["accepted"] * len(blocks)
    sent = [params[0] for method, params in node.calls if method == "submitblock"]
    per_block = sorted(sent.count(b.serialize().hex()) for _, _, b in blocks)
    # One block carries the retries; every other one is sent at most twice (its own first
    # try before the queue formed, and once when the node is back): not one loop per block.
    assert per_block[-1] >= 30 and max(per_block[:-1]) <= 2
    assert {journal.get(b.hash_hex_display()).results for _, _, b in blocks} == {("unavailable", "accepted")}
    assert pending_gauge(metrics) == 0 and blocks_total(metrics, "accepted") == len(blocks)
    assert submitter.waiting_for_node == 0 and submitter._retry_task.done()


def test_cancelled_submissions_leave_the_queue_and_stop_the_retry_loop(tmp_path):
    blocks = [solved(i) for i in range(3)]

    async def main():
        node = FakeNode(default=rpc.NodeUnavailable(None, "connection refused", "submitblock"))
        journal = Journal(tmp_path / "blocks.jsonl")
        submitter = BlockSubmitter(node, journal, retry_initial_delay=60.0, retry_max_delay=60.0)
        tasks = [asyncio.create_task(submitter.submit(job, sol)) for job, sol, _ in blocks]
        await wait_until(lambda: submitter.waiting_for_node == 3, 30, "every block queued")
        loop_task = submitter._retry_task
        started = asyncio.get_running_loop().time()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, loop_task, return_exceptions=True)
        took = asyncio.get_running_loop().time() - started
        return journal, submitter, loop_task, took

    journal, submitter, loop_task, took = asyncio.run(main())
    assert took < 1.0 and loop_task.cancelled()
    assert submitter.waiting_for_node == 0 and submitter._locks == {}
    assert journal.pending_count() == 3


# --- the next start: blocks on the tip first, every other earlier entry judged in bulk -----


def test_only_one_of_many_siblings_on_the_tip_is_resubmitted(tmp_path):
    tip = fake_hash("tip")
    siblings = [solved(i, tip) for i in range(30)]

    async def main():
        journal = Journal(tmp_path / "blocks.jsonl")
        for job, _, block in siblings:
            journal.record_found(block.serialize(), block_hash_hex_display=block.hash_hex_display(),
                                 prev_hash_hex_display=tip, height=1, job_id=job.job_id)
        first = siblings[0][2].hash_hex_display()
        # submitblock accepted; then getblockcount, getblockhash 1 (the first sibling won)
        node = FakeNode(["high-hash", None, 1, first])
        metrics = Metrics()
        submitter = BlockSubmitter(node, journal, metrics, clock=FakeClock())
        on_tip = await submitter.resubmit_on_tip(tip)
        judged = await submitter.judge_earlier_entries()
        return node, journal, metrics, on_tip, judged

    node, journal, metrics, on_tip, judged = asyncio.run(main())
    # The first was refused (a bad block), the second accepted: that moved the tip, so the
    # other 28 build on a tip the chain has left.
    assert [o.result for o in on_tip] == ["high-hash", "accepted"]
    assert len(node.submitted_hex()) == 2
    assert [o.result for o in judged] == ["stale"] * 28
    assert journal.pending_count() == 0
    assert blocks_total(metrics, "stale") == 28 and blocks_total(metrics, "accepted") == 1


def test_earlier_entries_are_judged_in_bulk(tmp_path):
    from .journal_gen import found_record, stale_entries, write_journal

    path = tmp_path / "blocks.jsonl"
    old = stale_entries(20_000, [5, 6, 7, 8, 50])  # 50: above the node's tip
    in_chain_hash = old[2][0]  # height 7
    write_journal(path, [found_record(h, p, height, raw) for h, p, height, raw in old])

    async def main():
        journal = Journal(path)
        answers = {5: fake_hash("5"), 6: fake_hash("6"), 7: in_chain_hash, 8: fake_hash("8")}

        class ChainNode(FakeNode):
            async def call(self, method, *params, timeout=None):
                self.calls.append((method, params))
                await asyncio.sleep(0)
                return 9 if method == "getblockcount" else answers[params[0]]

        node = ChainNode()
        metrics = Metrics()
        submitter = BlockSubmitter(node, journal, metrics, clock=FakeClock())
        assert await submitter.resubmit_on_tip(fake_hash("the tip")) == []
        return node, journal, metrics, await submitter.judge_earlier_entries()

    node, journal, metrics, judged = asyncio.run(main())
    assert node.calls == [("getblockcount", ()), *[("getblockhash", (h,)) for h in (5, 6, 7, 8)]]
    assert len(judged) == 20_000 and journal.pending_count() == 0
    assert [o.block_hash_hex_display for o in judged if o.accepted] == [in_chain_hash]
    assert blocks_total(metrics, "stale") == 19_999 and pending_gauge(metrics) == 0
