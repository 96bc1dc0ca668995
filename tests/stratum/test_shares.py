"""Share checks with real shares found by the kernel: every reject reason, rolling, blocks."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernels
from kernels.scan import warm_up
from miner.chain import bits_to_target, build_coinbase
from miner.chain.target import difficulty_to_target, hash_to_int
from miner.stratum.shares import (
    MAX_ISSUED_JOBS,
    NTIME_MAX_FUTURE_S,
    IssuedJob,
    JobLedger,
    Reject,
    ShareBook,
    ShareResult,
    check_share,
)
from miner.work.job import Job

REGTEST_BITS = 0x207FFFFF
HARD_BITS = 0x1702068F  # mainnet 951658: no share here is ever a block
MASK = 0x1FFFE000  # BIP320
EN1 = bytes.fromhex("0000002a")
EN2_SIZE = 4
NOW = 1_700_000_100
EASY = difficulty_to_target(1e-6)  # about one hash in 4096 meets it
HARDER = difficulty_to_target(1e-3)
SCAN = 1 << 16


def make_job(job_id: str = "j1", bits: int = HARD_BITS, height: int = 1, clean: bool = True,
             min_time: int | None = None, prev: bytes | None = None) -> Job:
    coinbase = build_coinbase(height, 50 * 10**8, bytes.fromhex("0014" + "11" * 20), extranonce_size=8)
    return Job(job_id=job_id, prev_hash_internal=prev or bytes(31) + bytes((height,)), version=0x20000000,
               bits=bits, ntime=1_700_000_000, target=bits_to_target(bits), coinbase=coinbase,
               merkle_branch=(), clean=clean, height=height, min_time=min_time)


@pytest.fixture(scope="module", autouse=True)
def compiled_kernel():
    warm_up()


def find(job: Job, target: int, en2: bytes = b"\x00" * EN2_SIZE, ntime: int | None = None,
         version: int | None = None, count: int = SCAN) -> list[int]:
    """Nonces whose header meets target, by the real kernel."""
    return kernels.search(job.header76(EN1 + en2, ntime, version), target, 0, count)


def miss(job: Job, target: int, en2: bytes = b"\x00" * EN2_SIZE) -> int:
    """A nonce whose header does not meet target."""
    hits = set(find(job, target, en2, count=64))
    nonce = next(n for n in range(64) if n not in hits)
    assert hash_to_int(job.header(EN1 + en2, nonce).hash_internal()) > target
    return nonce


def submit(book: ShareBook, job_id: str = "s1", *, en2: bytes = b"\x00" * EN2_SIZE, ntime: int = 1_700_000_000,
           nonce: int = 0, version_bits: int | None = None, mask: int = MASK, **kw) -> ShareResult:
    return check_share(book, job_id=job_id, extranonce1=EN1, extranonce2=en2, ntime=ntime, nonce=nonce,
                       version_bits=version_bits, version_mask=mask, now=kw.pop("now", NOW), **kw)


def issued_book(job: Job, target: int = EASY, job_id: str = "s1") -> ShareBook:
    book = ShareBook()
    book.issue(job, job_id=job_id, share_target=target, now=NOW)
    return book


def test_reject_codes_and_labels():
    assert {r: r.code for r in Reject} == {
        Reject.NOT_SUBSCRIBED: 25, Reject.UNAUTHORIZED: 24, Reject.MALFORMED: 20, Reject.JOB_NOT_FOUND: 21,
        Reject.STALE: 21, Reject.BAD_EXTRANONCE2_SIZE: 20, Reject.NTIME_OUT_OF_RANGE: 20,
        Reject.VERSION_BITS_OUTSIDE_MASK: 20, Reject.DUPLICATE: 22,
        Reject.LOW_DIFFICULTY: 23}
    assert len({r.label for r in Reject}) == len(Reject)
    assert all(r.message and r.label.isidentifier() for r in Reject)


def test_valid_share_is_accepted_with_its_solution():
    job = make_job()
    book = issued_book(job)
    nonce = find(job, EASY)[0]
    result = submit(book, nonce=nonce)
    assert result.accepted and result.reject is None and not result.is_block
    sol = result.solution
    assert sol.job_id == "j1" and sol.extranonce == EN1 + b"\x00" * 4 and sol.nonce == nonce
    assert sol.version == 0x20000000 and sol.ntime == 1_700_000_000
    header = job.solution_header(sol)
    assert header.hash_internal() == result.hash_internal
    assert hash_to_int(result.hash_internal) <= EASY
    assert result.share_difficulty >= 1e-6
    assert result.issued.job is job and result.issued.difficulty == pytest.approx(1e-6)


def test_low_difficulty_share_is_rejected_with_its_hash():
    job = make_job()
    book = issued_book(job)
    result = submit(book, nonce=miss(job, EASY))
    assert not result.accepted and result.reject is Reject.LOW_DIFFICULTY and result.reject.code == 23
    assert result.solution is None and result.hash_internal is not None
    assert 0 < result.share_difficulty < 1e-6


def test_duplicate_accepted_and_duplicate_low_difficulty():
    job = make_job()
    book = issued_book(job)
    good, bad = find(job, EASY)[0], miss(job, EASY)
    assert submit(book, nonce=good).accepted
    assert submit(book, nonce=good).reject is Reject.DUPLICATE
    assert submit(book, nonce=bad).reject is Reject.LOW_DIFFICULTY
    assert submit(book, nonce=bad).reject is Reject.DUPLICATE  # recorded before the hash
    assert book.shares_seen("s1") == 2


def test_no_rolling_and_zero_rolled_bits_are_the_same_share():
    job = make_job()
    book = issued_book(job)
    nonce = find(job, EASY)[0]
    assert submit(book, nonce=nonce, version_bits=None).accepted
    assert submit(book, nonce=nonce, version_bits=0).reject is Reject.DUPLICATE


def test_early_rejections_are_not_recorded():
    job = make_job()
    book = issued_book(job)
    nonce = find(job, EASY)[0]
    assert submit(book, nonce=nonce, version_bits=0x1000).reject is Reject.VERSION_BITS_OUTSIDE_MASK
    assert submit(book, nonce=nonce, ntime=NOW + NTIME_MAX_FUTURE_S + 1).reject is Reject.NTIME_OUT_OF_RANGE
    assert book.shares_seen("s1") == 0
    assert submit(book, nonce=nonce).accepted


def test_version_rolling_inside_the_mask():
    job = make_job()
    book = issued_book(job)
    bits = 0x0ABCE000 & MASK
    rolled = (job.version & ~MASK) | bits
    nonce = find(job, EASY, version=rolled)[0]
    result = submit(book, nonce=nonce, version_bits=bits)
    assert result.accepted and result.solution.version == rolled == 0x2ABCE000
    assert job.solution_header(result.solution).hash_internal() == result.hash_internal
    # The same nonce without rolling is a different header (and almost surely low difficulty).
    plain = submit(book, nonce=nonce)
    assert plain.reject in (Reject.LOW_DIFFICULTY, None)
    assert plain.hash_internal != result.hash_internal


@pytest.mark.parametrize("bits", [0x00001000, 0x20000000, 0xE0000000, 0x00000001, 0x20002000])
def test_version_bits_outside_the_mask_are_rejected(bits):
    book = issued_book(make_job())
    result = submit(book, version_bits=bits)
    assert result.reject is Reject.VERSION_BITS_OUTSIDE_MASK and result.reject.code == 20


def test_rolling_without_an_agreed_mask():
    book = issued_book(make_job())
    assert submit(book, version_bits=0x2000, mask=0).reject is Reject.VERSION_BITS_OUTSIDE_MASK
    assert submit(book, version_bits=0, mask=0).reject in (Reject.LOW_DIFFICULTY, None)


def test_share_judged_at_the_difficulty_its_job_was_issued_with():
    job_a, job_b = make_job("a", clean=False), make_job("b", clean=False)
    book = ShareBook()
    book.issue(job_a, job_id="1", share_target=EASY, now=NOW)  # difficulty d1 = 1e-6
    book.issue(job_b, job_id="2", share_target=HARDER, now=NOW + 5)  # set_difficulty d2 = 1e-3 > d1
    easy_only = [n for n in find(job_a, EASY) if hash_to_int(job_a.header(EN1 + bytes(4), n).hash_internal()) > HARDER]
    assert submit(book, "1", nonce=easy_only[0]).accepted  # job a keeps d1
    # job b has the same header content, so the same nonce is easy-only there too
    assert submit(book, "2", nonce=easy_only[0]).reject is Reject.LOW_DIFFICULTY
    assert book.get("1").share_target == EASY and book.get("2").difficulty == pytest.approx(1e-3)


def test_block_on_regtest():
    job = make_job(bits=REGTEST_BITS)
    book = issued_book(job, target=job.target)  # vardiff's cap: share target = network target
    nonce = find(job, job.target)[0]
    result = submit(book, nonce=nonce)
    assert result.accepted and result.is_block
    assert job.block(result.solution).check(check_pow=True) == []


def test_block_accepted_even_when_the_share_target_is_harder_than_the_network():
    job = make_job(bits=REGTEST_BITS)
    book = issued_book(job, target=EASY)  # 1e-6 is far harder than regtest's 4.66e-10
    nonce = next(n for n in find(job, job.target) if n not in set(find(job, EASY)))
    result = submit(book, nonce=nonce)
    assert result.accepted and result.is_block and result.share_difficulty < 1e-6


def test_stale_after_the_tip_is_retired_even_for_a_block():
    job = make_job(bits=REGTEST_BITS)
    book = issued_book(job, target=job.target)
    nonce = find(job, job.target)[0]
    assert book.ledger.retire_tip(job.prev_hash_internal) == 1
    result = submit(book, nonce=nonce)
    assert not result.accepted and result.reject is Reject.STALE and result.reject.code == 21
    assert not result.is_block and result.solution is None
    assert book.ledger.retire_tip(job.prev_hash_internal) == 0


def test_new_tip_marks_other_tips_stale_clean_or_not():
    ledger = JobLedger()
    book = ShareBook(ledger=ledger)
    old, same_tip = make_job("old", height=1, clean=False), make_job("same", height=1, clean=False)
    for job_id, job in (("1", old), ("2", same_tip)):
        ledger.publish(job)
        book.issue(job, job_id=job_id, share_target=EASY, now=NOW)
    assert not book.is_stale("1") and not book.is_stale("2")
    # The tip moved: stale even though the source did not flag the new job clean.
    new = make_job("new", height=2, clean=False)
    ledger.publish(new)
    book.issue(new, job_id="3", share_target=EASY, now=NOW)
    assert book.is_stale("1") and book.is_stale("2") and not book.is_stale("3")
    assert submit(book, "1").reject is Reject.STALE


def test_clean_job_on_the_same_tip_makes_older_jobs_stale():
    ledger = JobLedger()
    book = ShareBook(ledger=ledger)
    a, b = make_job("a", clean=False), make_job("b", clean=True)
    for job_id, job in (("1", a), ("2", b)):
        ledger.publish(job)
        book.issue(job, job_id=job_id, share_target=EASY, now=NOW)
    assert book.is_stale("1") and not book.is_stale("2")
    assert submit(book, "1").reject is Reject.STALE


def test_duplicates_are_judged_across_sessions_of_one_ledger():
    # A resumed session gets its extranonce1 back: replaying an accepted share is a duplicate.
    job = make_job()
    ledger = JobLedger()
    ledger.publish(job)
    first, resumed = ShareBook(ledger=ledger), ShareBook(ledger=ledger)
    first.issue(job, job_id="1", share_target=EASY, now=NOW)
    resumed.issue(job, job_id="7", share_target=EASY, now=NOW)
    nonce = find(job, EASY)[0]
    assert submit(first, "1", nonce=nonce).accepted
    replay = submit(resumed, "7", nonce=nonce)
    assert replay.reject is Reject.DUPLICATE and replay.reject.code == 22
    other = check_share(resumed, job_id="7", extranonce1=bytes.fromhex("0000002b"), extranonce2=bytes(4),
                        ntime=1_700_000_000, nonce=nonce, version_bits=None, version_mask=MASK, now=NOW)
    assert other.reject is not Reject.DUPLICATE  # another extranonce1 is another header
    assert ledger.shares_seen(job) == 2


def test_retired_tip_stays_retired_until_a_job_moves_the_tip_back_or_is_clean():
    t1, t2 = make_job("t1", height=1), make_job("t2", height=2)
    ledger = JobLedger()
    ledger.publish(t1)
    ledger.retire_tip(t1.prev_hash_internal)
    assert not ledger.is_live(t1) and ledger.is_retired(t1.prev_hash_internal)
    refresh = make_job("t1-refresh", height=1, clean=False)  # a late template on the same tip
    ledger.publish(refresh)
    assert not ledger.is_live(refresh)
    ledger.publish(t2)  # our block's successor
    back = make_job("t1-again", height=1, clean=False)  # a reorg back to T1
    ledger.publish(back)
    assert ledger.is_live(back) and not ledger.is_retired(t1.prev_hash_internal) and not ledger.is_live(t2)
    ledger.retire_tip(back.prev_hash_internal)
    again = make_job("t1-clean", height=1, clean=True)
    ledger.publish(again)
    assert ledger.is_live(again)


def test_a_share_judged_under_another_extranonce1_is_stale():
    # Proxy failover: set_extranonce changed the session's extranonce1; work sent under the
    # old one belongs to the old pool.
    job = make_job()
    book = ShareBook()
    book.issue(job, job_id="s1", share_target=EASY, now=NOW, extranonce1=bytes.fromhex("aabbccdd"))
    assert submit(book).reject is Reject.STALE


def test_ledger_memory_is_bounded_and_freed_with_its_jobs():
    ledger = JobLedger(max_live_jobs=2, max_shares_per_tip=5)
    jobs = [make_job(f"j{i}", clean=False) for i in range(3)]
    for job in jobs:
        ledger.publish(job)
    assert len(ledger) == 2 and not ledger.is_live(jobs[0]) and ledger.is_live(jobs[2])
    for i in range(5):
        assert ledger.record(jobs[2], EN1, bytes([i])) is True
    assert ledger.record(jobs[2], EN1, bytes([4])) is None  # a duplicate
    assert ledger.record(jobs[2], EN1, b"\x09") is False  # full: not remembered
    ledger.publish(make_job("next", height=2))
    assert ledger.shares == 0 and len(ledger) == 1


def test_unknown_and_forgotten_jobs():
    book = ShareBook()
    assert submit(book, "nope").reject is Reject.JOB_NOT_FOUND
    for i in range(MAX_ISSUED_JOBS + 1):
        book.issue(make_job(f"j{i}", clean=False), job_id=str(i), share_target=EASY, now=NOW + i)
    assert len(book) == MAX_ISSUED_JOBS and "0" not in book and book.latest.job_id == str(MAX_ISSUED_JOBS)
    assert submit(book, "0").reject is Reject.JOB_NOT_FOUND
    assert submit(book, "1").reject is not Reject.JOB_NOT_FOUND


def test_reissuing_the_same_job_keeps_its_duplicates():
    job = make_job()
    book = issued_book(job)
    nonce = find(job, EASY)[0]
    assert submit(book, nonce=nonce).accepted
    book.issue(job, job_id="s1", share_target=HARDER, now=NOW + 1)
    assert submit(book, nonce=nonce).reject is Reject.DUPLICATE
    book.issue(make_job(), job_id="s1", share_target=EASY, now=NOW + 2)  # different work, reused id
    assert submit(book, nonce=nonce).accepted


def test_session_state_rejections():
    book = issued_book(make_job())
    assert submit(book, subscribed=False).reject is Reject.NOT_SUBSCRIBED
    assert submit(book, authorized=False).reject is Reject.UNAUTHORIZED
    assert submit(book, subscribed=False, authorized=False).reject.code == 25


@pytest.mark.parametrize("en2", [b"", b"\x00" * 3, b"\x00" * 5, b"\x00" * 8])
def test_bad_extranonce2_size(en2):
    result = submit(issued_book(make_job()), en2=en2)
    assert result.reject is Reject.BAD_EXTRANONCE2_SIZE and result.issued is not None


def test_extranonce2_fills_what_extranonce1_leaves():
    job = make_job()
    book = issued_book(job)
    en1 = b"\x01\x02"
    nonce = kernels.search(job.header76(en1 + b"\xaa" * 6), EASY, 0, SCAN)[0]
    result = check_share(book, job_id="s1", extranonce1=en1, extranonce2=b"\xaa" * 6, ntime=job.ntime,
                         nonce=nonce, version_bits=None, version_mask=MASK, now=NOW)
    assert result.accepted and result.solution.extranonce == en1 + b"\xaa" * 6


def test_ntime_window_without_min_time():
    job = make_job()
    book = issued_book(job)
    assert submit(book, ntime=job.ntime - 1).reject is Reject.NTIME_OUT_OF_RANGE
    assert submit(book, ntime=NOW + NTIME_MAX_FUTURE_S + 1).reject is Reject.NTIME_OUT_OF_RANGE
    assert submit(book, ntime=NOW + 60, ntime_max_future=30).reject is Reject.NTIME_OUT_OF_RANGE
    late = NOW + NTIME_MAX_FUTURE_S
    nonce = find(job, EASY, ntime=late)[0]
    assert submit(book, ntime=late, nonce=nonce).accepted


def test_ntime_window_with_min_time_follows_consensus():
    job = make_job(min_time=1_699_999_000)
    book = issued_book(job)
    early = 1_699_999_500  # before job.ntime but after the node's minimum
    nonce = find(job, EASY, ntime=early)[0]
    assert submit(book, ntime=early, nonce=nonce).accepted
    assert submit(book, ntime=1_699_998_999).reject is Reject.NTIME_OUT_OF_RANGE


def test_a_valid_share_is_accepted_when_the_duplicate_memory_is_full():
    # At regtest difficulty every hash is a share: our memory limit must not refuse them.
    job = make_job()
    book = ShareBook(ledger=JobLedger(max_shares_per_tip=2))
    book.ledger.publish(job)
    book.issue(job, job_id="s1", share_target=EASY, now=NOW)
    nonces = find(job, EASY)[:3]
    results = [submit(book, nonce=n) for n in nonces]
    assert all(r.accepted for r in results)
    assert [r.remembered for r in results] == [True, True, False]
    assert submit(book, nonce=nonces[0]).reject is Reject.DUPLICATE
    assert submit(book, nonce=miss(job, EASY)).reject is Reject.LOW_DIFFICULTY


@pytest.mark.parametrize("field,value", [
    ("job_id", 7), ("extranonce2", "00000000"), ("extranonce2", None), ("extranonce1", "00"),
    ("ntime", -1), ("ntime", 1 << 32), ("ntime", "65536"), ("ntime", 1.5e9), ("nonce", -1), ("nonce", 1 << 32),
    ("nonce", True), ("version_bits", 1 << 32), ("version_bits", -0x2000), ("version_bits", "2000"),
])
def test_malformed_fields(field, value):
    book = issued_book(make_job())
    args = dict(job_id="s1", extranonce1=EN1, extranonce2=bytes(4), ntime=1_700_000_000, nonce=0,
                version_bits=None, version_mask=MASK, now=NOW)
    args[field] = value
    result = check_share(book, **args)
    assert result.reject is Reject.MALFORMED and result.reject.code == 20


def test_bad_mask_or_target_is_our_bug():
    book = issued_book(make_job())
    with pytest.raises(ValueError):
        submit(book, mask=1 << 32)
    with pytest.raises(ValueError):
        book.issue(make_job(), job_id="x", share_target=0, now=NOW)


def test_issued_job_is_frozen():
    issued = issued_book(make_job()).get("s1")
    assert isinstance(issued, IssuedJob) and issued.tip == bytes(31) + b"\x01"
    with pytest.raises(AttributeError):
        issued.share_target = 1


_ANY = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(1 << 70), max_value=1 << 70),
                 st.binary(max_size=12), st.text(max_size=10), st.floats(allow_nan=True))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(job_id=st.one_of(st.sampled_from(["s1", "s2", ""]), _ANY), extranonce1=st.one_of(st.binary(max_size=9), _ANY),
       extranonce2=st.one_of(st.binary(max_size=9), _ANY),
       ntime=st.one_of(st.integers(min_value=1_699_999_990, max_value=1_700_000_010), _ANY),
       nonce=st.one_of(st.integers(min_value=0, max_value=0xFFFFFFFF), _ANY),
       version_bits=st.one_of(st.integers(min_value=0, max_value=0xFFFFFFFF), _ANY))
def test_random_submits_never_raise(job_id, extranonce1, extranonce2, ntime, nonce, version_bits):
    book = ShareBook()
    book.issue(make_job(), job_id="s1", share_target=difficulty_to_target(1.0), now=NOW)
    result = check_share(book, job_id=job_id, extranonce1=extranonce1, extranonce2=extranonce2, ntime=ntime,
                         nonce=nonce, version_bits=version_bits, version_mask=MASK, now=NOW)
    assert isinstance(result, ShareResult)
    assert result.accepted == (result.reject is None) == (result.solution is not None)
    if not result.accepted:
        assert isinstance(result.reject, Reject)


@settings(max_examples=200, deadline=None)
@given(en2=st.binary(min_size=4, max_size=4), nonce=st.integers(0, 0xFFFFFFFF),
       bits=st.integers(0, 0xFFFFFFFF), ntime=st.integers(1_700_000_000, NOW))
def test_any_well_formed_share_is_hashed_at_the_rolled_version(en2, nonce, bits, ntime):
    job = make_job()
    book = issued_book(job, target=difficulty_to_target(1.0))
    result = submit(book, en2=en2, nonce=nonce, version_bits=bits, ntime=ntime)
    if bits & ~MASK:
        assert result.reject is Reject.VERSION_BITS_OUTSIDE_MASK
    else:
        version = (job.version & ~MASK) | (bits & MASK)
        assert result.reject in (None, Reject.LOW_DIFFICULTY)
        assert result.hash_internal == job.header(EN1 + en2, nonce, ntime, version).hash_internal()


def test_a_share_resubmitted_under_a_reissued_job_id_is_still_a_duplicate():
    # Found in review: a difficulty change re-issues the job under a new id; with a fresh
    # duplicate memory the same share was accepted twice.
    import kernels
    from miner.chain import bits_to_target, build_coinbase
    from miner.chain.target import difficulty_to_target
    from miner.stratum.shares import Reject, ShareBook, check_share
    from miner.work.job import Job

    coinbase = build_coinbase(1, 50 * 10**8, bytes.fromhex("51"), extranonce_size=8)
    job = Job("j", bytes(32), 0x20000000, 0x1702068F, 1_700_000_000, bits_to_target(0x1702068F), coinbase, (), True)
    book = ShareBook()
    easy, easier = difficulty_to_target(1e-6), difficulty_to_target(1e-7)
    book.issue(job, job_id="1", share_target=easy, now=1_700_000_000)
    en1, en2 = bytes(4), bytes(4)
    nonce = kernels.search(job.header76(en1 + en2), easy, 0, 1 << 24, threads=1)[0]
    args = dict(extranonce1=en1, extranonce2=en2, ntime=job.ntime, nonce=nonce, version_bits=None,
                version_mask=0, now=1_700_000_000)
    assert check_share(book, job_id="1", **args).accepted
    book.issue(job, job_id="2", share_target=easier, now=1_700_000_001)  # re-issued, new difficulty
    again = check_share(book, job_id="2", **args)
    assert not again.accepted and again.reject is Reject.DUPLICATE
