"""Stratum share checks, pure: what each session was sent, which jobs are live, the verdict.

No clocks, sockets or locks: time comes in as an argument; state is a ShareBook per
session (its job ids) over one JobLedger per server (live jobs, duplicates across every
session). check_share runs its checks in this order; the first failure is the answer,
cheap checks come before the one hash:

    session   not subscribed ............................... 25 NOT_SUBSCRIBED
              not authorized ............................... 24 UNAUTHORIZED
    fields    wrong type, or not a u32 ..................... 20 MALFORMED
    job       id never issued, or forgotten ................ 21 JOB_NOT_FOUND
              not live in the ledger (tip moved, tip retired,
              older than a clean job) or issued under
              another extranonce1 .......................... 21 STALE
    sizes     len(en2) != job.extranonce_size - len(en1) ... 20 BAD_EXTRANONCE2_SIZE
    ntime     < job.min_time (job.ntime when unknown),
              or > now + 7200, or > job.max_time ........... 20 NTIME_OUT_OF_RANGE
    version   version_bits outside the agreed mask ......... 20 VERSION_BITS_OUTSIDE_MASK
    repeat    same header already submitted for the job,
              by any session ............................... 22 DUPLICATE
    hash      hash > share target the job was issued with .. 23 LOW_DIFFICULTY
              (unless it meets the network target: a block is always accepted)

Duplicates: a submit is recorded once it has passed every check before the hash, so a
low-difficulty share sent again is a DUPLICATE, exactly like an accepted one sent again
(no second hash for a repeat). The key is the header's variable part (extranonce1, then
extranonce2, ntime, nonce, final nVersion), so version_bits=None and version_bits=0 are
the same share, and a resumed session (same extranonce1) cannot replay its old shares.
The memory is bounded per tip (MAX_SHARES_PER_TIP); past it a share is still judged in
full and a valid one accepted, only not remembered (ShareResult.remembered is False): a
valid share is never refused for our own limit (at regtest difficulty every hash is one).

ntime window: [job.min_time, now + 7200] when the template gave min_time (the consensus
rule: any such block is valid), else [job.ntime, now + 7200] as pools commonly do; 7200 s
is Bitcoin's two-hour future limit. A job with max_time (testnet: normal difficulty only
up to 20 minutes after the parent) also caps it there, so a rolled ntime never makes a
block the node would reject as bad-diffbits.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

from miner.chain.target import hash_to_int, target_to_difficulty
from miner.work.job import Job, Solution

__all__ = [
    "MAX_ISSUED_JOBS",
    "MAX_LIVE_JOBS",
    "MAX_SHARES_PER_TIP",
    "NTIME_MAX_FUTURE_S",
    "U32_MAX",
    "IssuedJob",
    "JobLedger",
    "Reject",
    "ShareBook",
    "ShareResult",
    "check_share",
]

U32_MAX = 0xFFFFFFFF
# Jobs remembered per session; a share for an older job id answers JOB_NOT_FOUND.
MAX_ISSUED_JOBS = 16
# Duplicate keys remembered over every live job of the server (~100 bytes each: ~50 MB).
# At vardiff's ~1 share / 10 s per miner that is hours of a large farm; it fills only when
# the difficulty cannot rise (shares that are blocks): then shares go unremembered.
MAX_SHARES_PER_TIP = 500_000
# Live jobs on the current tip (template refreshes); older ones answer stale.
MAX_LIVE_JOBS = 16
# Retired tips remembered (so that a late job on one is not mined as live).
MAX_RETIRED_TIPS = 64
# Bitcoin rejects a block more than two hours (seconds) ahead of network-adjusted time.
NTIME_MAX_FUTURE_S = 7200


class Reject(Enum):
    """Why a share was refused: stratum error code, metric label, reply text."""

    NOT_SUBSCRIBED = (25, "not_subscribed", "Not subscribed")
    UNAUTHORIZED = (24, "unauthorized", "Unauthorized worker")
    MALFORMED = (20, "malformed", "Malformed share")
    JOB_NOT_FOUND = (21, "job_not_found", "Job not found")
    STALE = (21, "stale", "Stale job: the chain tip has moved")
    BAD_EXTRANONCE2_SIZE = (20, "bad_extranonce2_size", "Incorrect extranonce2 size")
    NTIME_OUT_OF_RANGE = (20, "ntime_out_of_range", "ntime out of range")
    VERSION_BITS_OUTSIDE_MASK = (20, "version_bits_outside_mask", "Version bits outside the negotiated mask")
    DUPLICATE = (22, "duplicate", "Duplicate share")
    LOW_DIFFICULTY = (23, "low_difficulty", "Low difficulty share")

    def __init__(self, code: int, label: str, message: str) -> None:
        self.code = code
        self.label = label
        self.message = message


@dataclass(frozen=True)
class IssuedJob:
    """One job as a session was sent it: its id there and the share target at that time."""

    job: Job
    job_id: str  # as the session saw it in mining.notify
    share_target: int  # fixed at issue: a later set_difficulty does not change it
    issued_at: float  # unix seconds
    # The session's extranonce1 when the job went out (None: not recorded). A share judged
    # under another one (proxy failover: set_extranonce) is for work of the old pool: stale.
    extranonce1: bytes | None = None

    @property
    def tip(self) -> bytes:
        """The prev hash (internal order) this job builds on."""
        return self.job.prev_hash_internal

    @property
    def difficulty(self) -> float:
        """The share difficulty this job was issued at."""
        return target_to_difficulty(self.share_target)


class _LiveJob:
    """A live job's duplicate memory: header keys per extranonce1, so that a resumed
    session (same extranonce1) or any other connection replaying a share is caught."""

    __slots__ = ("job", "seen")

    def __init__(self, job: Job) -> None:
        self.job = job  # held, so the id() key cannot be reused while the entry lives
        self.seen: dict[bytes, set[bytes]] = {}


class JobLedger:
    """Which jobs are live, across every session of a server, and the shares seen on them.

    A job is live from publish() until one of these makes it stale (code 21):

        publish(job on another tip) ..... every job on the old tip (the tip moved)
        publish(clean job, same tip) .... every older job on the tip (clean_jobs)
        retire_tip(T) ................... every job on T (our block on T is in): a share
                                          on T is stale, never a block submission
        more than max_live_jobs ......... the oldest (its miners have newer work)

    A job on a retired tip is un-retired by publishing a job on it that moves the tip back
    there (a reorg back) or is clean; a plain refresh on the retired tip stays retired.
    Duplicate memory lives only as long as its job, at most max_shares_per_tip keys.
    """

    def __init__(self, max_live_jobs: int = MAX_LIVE_JOBS, max_shares_per_tip: int = MAX_SHARES_PER_TIP) -> None:
        if min(max_live_jobs, max_shares_per_tip) < 1:
            raise ValueError("max_live_jobs and max_shares_per_tip must be >= 1")
        self.max_live_jobs = max_live_jobs
        self.max_shares_per_tip = max_shares_per_tip
        self.tip: bytes | None = None  # prev hash (internal order) of the newest published job
        self._live: OrderedDict[int, _LiveJob] = OrderedDict()  # id(job) -> entry, oldest first
        self._retired: OrderedDict[bytes, None] = OrderedDict()  # tips, oldest first (bounded)
        self.shares = 0  # keys remembered over every live job

    def publish(self, job: Job) -> None:
        """A job goes out to miners: it is live; older work may become stale (see above)."""
        entry = self._live.get(id(job))
        if entry is not None and entry.job is job:
            return  # the same job again (a new difficulty, a resend): nothing changes
        tip = job.prev_hash_internal
        if tip != self.tip or job.clean:
            self._drop_all()
            self._retired.pop(tip, None)
            self.tip = tip
        self._live[id(job)] = _LiveJob(job)
        while len(self._live) > self.max_live_jobs:
            _, old = self._live.popitem(last=False)
            self.shares -= sum(len(keys) for keys in old.seen.values())

    def retire_tip(self, prev_hash_internal: bytes) -> int:
        """No more blocks on this tip: its jobs are stale from now on; returns how many were live."""
        self._retired[bytes(prev_hash_internal)] = None
        while len(self._retired) > MAX_RETIRED_TIPS:
            self._retired.popitem(last=False)
        if prev_hash_internal != self.tip:
            return 0
        count = len(self._live)
        self._drop_all()
        return count

    def is_retired(self, prev_hash_internal: bytes) -> bool:
        return prev_hash_internal in self._retired

    def is_live(self, job: Job) -> bool:
        """Whether shares on this job are still judged (not stale)."""
        entry = self._live.get(id(job))
        return entry is not None and entry.job is job and job.prev_hash_internal not in self._retired

    def record(self, job: Job, extranonce1: bytes, key: bytes) -> bool | None:
        """Remember a share's header key on a live job: None if already seen (a duplicate),
        else whether it is remembered (False once the memory is full)."""
        entry = self._live[id(job)]
        keys = entry.seen.get(extranonce1)
        if keys is None:
            keys = entry.seen[bytes(extranonce1)] = set()
        if key in keys:
            return None
        if self.shares >= self.max_shares_per_tip:
            return False
        keys.add(key)
        self.shares += 1
        return True

    def shares_seen(self, job: Job) -> int:
        """How many distinct shares are remembered for the job (0 once it is stale)."""
        entry = self._live.get(id(job))
        return sum(len(keys) for keys in entry.seen.values()) if entry is not None and entry.job is job else 0

    def __len__(self) -> int:
        return len(self._live)

    def _drop_all(self) -> None:
        self._live.clear()
        self.shares = 0


class ShareBook:
    """One session's issued jobs (its job ids and the share target each went out with).

    Liveness and duplicates are judged by the JobLedger shared by every session of a
    server. A book made without one (a single session, tests) owns a ledger and
    publishes each job it issues into it.
    """

    def __init__(self, max_jobs: int = MAX_ISSUED_JOBS, ledger: JobLedger | None = None) -> None:
        if max_jobs < 1:
            raise ValueError("max_jobs must be >= 1")
        self.max_jobs = max_jobs
        self._owns_ledger = ledger is None
        self.ledger = ledger if ledger is not None else JobLedger(max_live_jobs=max_jobs)
        self._entries: OrderedDict[str, IssuedJob] = OrderedDict()

    def issue(self, job: Job, *, job_id: str, share_target: int, now: float,
              extranonce1: bytes | None = None) -> IssuedJob:
        """Remember a job sent to the session under job_id (a re-sent job keeps its ledger entry)."""
        if not 0 < share_target <= (1 << 256) - 1:
            raise ValueError(f"share_target must be in 1..2**256-1, got {share_target}")
        issued = IssuedJob(job=job, job_id=job_id, share_target=share_target, issued_at=now,
                           extranonce1=None if extranonce1 is None else bytes(extranonce1))
        self._entries.pop(job_id, None)
        self._entries[job_id] = issued
        while len(self._entries) > self.max_jobs:
            self._entries.popitem(last=False)
        if self._owns_ledger:
            self.ledger.publish(job)
        return issued

    def get(self, job_id: str) -> IssuedJob | None:
        """The issued job for a session job id, if still remembered."""
        return self._entries.get(job_id)

    def is_stale(self, job_id: str) -> bool:
        """Whether the job was issued here and is no longer live."""
        issued = self._entries.get(job_id)
        return issued is not None and not self.ledger.is_live(issued.job)

    def shares_seen(self, job_id: str) -> int:
        """How many distinct shares are remembered for the job (over every session)."""
        issued = self._entries.get(job_id)
        return self.ledger.shares_seen(issued.job) if issued else 0

    @property
    def latest(self) -> IssuedJob | None:
        """The most recently issued job."""
        return next(reversed(self._entries.values())) if self._entries else None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._entries


@dataclass(frozen=True)
class ShareResult:
    """The verdict on one submit; solution is set exactly when accepted."""

    accepted: bool
    reject: Reject | None = None
    is_block: bool = False  # meets the network target on a job whose tip is current
    hash_internal: bytes | None = None  # None when rejected before hashing
    share_difficulty: float = 0.0  # achieved: DIFF1_TARGET / hash; 0.0 when not hashed
    solution: Solution | None = None  # job_id is the Job's (source's) id, not the session's
    issued: IssuedJob | None = None  # the job the share was judged against, when known
    remembered: bool = True  # False: the ledger's memory was full (a repeat would not be caught)

    @classmethod
    def rejected(cls, reason: Reject, issued: IssuedJob | None = None, **kw) -> ShareResult:
        return cls(accepted=False, reject=reason, issued=issued, **kw)


def _is_u32(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= U32_MAX


def _is_bytes(value: object) -> bool:
    return isinstance(value, (bytes, bytearray))


def _achieved_difficulty(hash_int: int) -> float:
    return math.inf if hash_int == 0 else target_to_difficulty(hash_int)


def check_share(
    book: ShareBook,
    *,
    job_id: str,
    extranonce1: bytes,
    extranonce2: bytes,
    ntime: int,
    nonce: int,
    version_bits: int | None,
    version_mask: int,
    now: float,
    ntime_max_future: int = NTIME_MAX_FUTURE_S,
    subscribed: bool = True,
    authorized: bool = True,
) -> ShareResult:
    """Judge one mining.submit against the session's book; records it unless refused early."""
    if not _is_u32(version_mask):
        raise ValueError(f"version_mask must be a u32, got {version_mask!r}")  # ours, not the miner's
    if not subscribed:
        return ShareResult.rejected(Reject.NOT_SUBSCRIBED)
    if not authorized:
        return ShareResult.rejected(Reject.UNAUTHORIZED)
    if (not isinstance(job_id, str) or not _is_bytes(extranonce1) or not _is_bytes(extranonce2)
            or not _is_u32(ntime) or not _is_u32(nonce) or not (version_bits is None or _is_u32(version_bits))):
        return ShareResult.rejected(Reject.MALFORMED)

    issued = book.get(job_id)
    if issued is None:
        return ShareResult.rejected(Reject.JOB_NOT_FOUND)
    job = issued.job
    if (issued.extranonce1 is not None and issued.extranonce1 != extranonce1) or not book.ledger.is_live(job):
        return ShareResult.rejected(Reject.STALE, issued)
    if len(extranonce2) != job.extranonce_size - len(extranonce1):
        return ShareResult.rejected(Reject.BAD_EXTRANONCE2_SIZE, issued)
    earliest = job.min_time if job.min_time is not None else job.ntime
    latest = now + ntime_max_future if job.max_time is None else min(now + ntime_max_future, job.max_time)
    if not earliest <= ntime <= latest:
        return ShareResult.rejected(Reject.NTIME_OUT_OF_RANGE, issued)
    if version_bits is None:
        version = job.version & U32_MAX
    elif version_bits & ~version_mask & U32_MAX:
        return ShareResult.rejected(Reject.VERSION_BITS_OUTSIDE_MASK, issued)
    else:
        version = (job.version & ~version_mask & U32_MAX) | (version_bits & version_mask)

    extranonce = bytes(extranonce1) + bytes(extranonce2)
    key = extranonce2 + ntime.to_bytes(4, "little") + nonce.to_bytes(4, "little") + version.to_bytes(4, "little")
    remembered = book.ledger.record(job, bytes(extranonce1), bytes(key))
    if remembered is None:
        return ShareResult.rejected(Reject.DUPLICATE, issued)

    hash_internal = job.header(extranonce, nonce, ntime, version).hash_internal()
    hash_int = hash_to_int(hash_internal)
    achieved = _achieved_difficulty(hash_int)
    # A share set harder than the network (a misconfigured floor) must never lose a block.
    is_block = hash_int <= job.target
    if hash_int > issued.share_target and not is_block:
        return ShareResult.rejected(Reject.LOW_DIFFICULTY, issued, hash_internal=hash_internal,
                                    share_difficulty=achieved)
    solution = Solution(job_id=job.job_id, extranonce=extranonce, ntime=ntime, nonce=nonce, version=version)
    return ShareResult(accepted=True, is_block=is_block, hash_internal=hash_internal,
                       share_difficulty=achieved, solution=solution, issued=issued, remembered=remembered)

