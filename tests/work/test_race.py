"""One block per tip with the node at a time (miner.work.race)."""

from __future__ import annotations

from hypothesis import given, strategies as st

from miner.work.race import BlockRace, Verdict

T1, T2 = b"\x01" * 32, b"\x02" * 32


def test_the_first_block_on_a_tip_is_sent_and_the_next_are_held():
    race = BlockRace(max_backups=2)
    assert race.offer(T1, "a") is Verdict.SUBMIT
    assert [race.offer(T1, x) for x in "bcd"] == [Verdict.HOLD] * 3
    assert race.offer(T2, "e") is Verdict.SUBMIT  # another tip is its own race


def test_an_accepted_block_finishes_its_tip():
    race = BlockRace()
    race.offer(T1, "a")
    race.offer(T1, "b")
    race.finish(T1)
    assert race.offer(T1, "c") is Verdict.STALE
    assert race.rejected(T1) is None  # a late answer cannot reopen it


def test_a_rejection_sends_the_newest_backups_in_order_then_reopens_the_tip():
    race = BlockRace(max_backups=2)
    race.offer(T1, "a")
    for x in "bcd":
        race.offer(T1, x)  # "b" falls out: only the last two are kept
    assert race.rejected(T1) == "c"
    assert race.rejected(T1) == "d"
    assert race.rejected(T1) is None
    assert race.offer(T1, "e") is Verdict.SUBMIT


def test_a_reorg_back_to_a_finished_tip_reopens_it():
    race = BlockRace()
    race.offer(T1, "a")
    race.finish(T1)
    race.reopen(T1)
    assert race.offer(T1, "b") is Verdict.SUBMIT


@given(st.lists(st.tuples(st.sampled_from(["offer", "rejected", "finish"]), st.integers(0, 3)), max_size=200))
def test_never_two_blocks_of_one_tip_with_the_node(ops):
    race = BlockRace(max_backups=3, max_tips=8)
    with_node: dict[int, int] = {}
    for op, t in ops:
        tip = bytes([t]) * 32
        if op == "offer":
            if race.offer(tip, object()) is Verdict.SUBMIT:
                with_node[t] = with_node.get(t, 0) + 1
        elif op == "rejected" and with_node.get(t):
            with_node[t] -= 1
            if race.rejected(tip) is not None:
                with_node[t] += 1
        elif op == "finish":
            race.finish(tip)
            with_node[t] = 0
        assert all(n <= 1 for n in with_node.values())
