"""Stratum share checks, pure: what one session was sent, and the verdict on one submit.

No clocks, sockets or locks: time comes in as an argument, state is a ShareBook per
session. check_share runs its checks in this order; the first failure is the answer,
cheap checks come before the one hash:

    session   not subscribed ............................... 25 NOT_SUBSCRIBED
              not authorized ............................... 24 UNAUTHORIZED
    fields    wrong type, or not a u32 ..................... 20 MALFORMED
    job       id never issued, or forgotten ................ 21 JOB_NOT_FOUND
              issued on a tip that is no longer the tip .... 21 STALE
    sizes     len(en2) != job.extranonce_size - len(en1) ... 20 BAD_EXTRANONCE2_SIZE
    ntime     < job.min_time (job.ntime when unknown),
              or > now + 7200, or > job.max_time ........... 20 NTIME_OUT_OF_RANGE
    version   version_bits outside the agreed mask ......... 20 VERSION_BITS_OUTSIDE_MASK
    repeat    same header already submitted for the job .... 22 DUPLICATE
              job's duplicate memory full .................. 20 TOO_MANY_SHARES
    hash      hash > share target the job was issued with .. 23 LOW_DIFFICULTY
              (unless it meets the network target: a block is always accepted)

Duplicates: a submit is recorded once it has passed every check before the hash, so a
low-difficulty share sent again is a DUPLICATE, exactly like an accepted one sent again
(no second hash for a repeat). The key is the header's variable part (full extranonce,
ntime, nonce, final nVersion), so version_bits=None and version_bits=0 are the same share.

ntime window: [job.min_time, now + 7200] when the template gave min_time (the consensus
rule: any such block is valid), else [job.ntime, now + 7200] as pools commonly do; 7200 s
is Bitcoin's two-hour future limit. A job with max_time (testnet: normal difficulty only
up to 20 minutes after the parent) also caps it there, so a rolled ntime never makes a
block the node would reject as bad-diffbits.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from miner.chain.target import hash_to_int, target_to_difficulty
from miner.work.job import Job, Solution

__all__ = [
    "MAX_ISSUED_JOBS",
    "MAX_SHARES_PER_JOB",
    "NTIME_MAX_FUTURE_S",
    "U32_MAX",
    "IssuedJob",
    "Reject",
    "ShareBook",
    "ShareResult",
    "check_share",
]

U32_MAX = 0xFFFFFFFF
# Jobs remembered per session; a share for an older job id answers JOB_NOT_FOUND.
MAX_ISSUED_JOBS = 16
# Duplicate keys remembered per job (~100 bytes each). At vardiff's ~1 share / 10 s a job
# sees a handful; reaching this means the difficulty lags badly, and accepting more
# without duplicate memory would let repeats earn credit, so the job refuses them.
MAX_SHARES_PER_JOB = 4096
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
    TOO_MANY_SHARES = (20, "too_many_shares", "Too many shares for this job; take a newer job")
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

    @property
    def tip(self) -> bytes:
        """The prev hash (internal order) this job builds on."""
        return self.job.prev_hash_internal

    @property
    def difficulty(self) -> float:
        """The share difficulty this job was issued at."""
        return target_to_difficulty(self.share_target)


@dataclass
class _Entry:
    issued: IssuedJob
    stale: bool = False
    seen: set[bytes] = field(default_factory=set)


class ShareBook:
    """Per-session memory of issued jobs, stale tips and submitted shares (bounded)."""

    def __init__(self, max_jobs: int = MAX_ISSUED_JOBS, max_shares_per_job: int = MAX_SHARES_PER_JOB) -> None:
        if max_jobs < 1 or max_shares_per_job < 1:
            raise ValueError("max_jobs and max_shares_per_job must be >= 1")
        self.max_jobs = max_jobs
        self.max_shares_per_job = max_shares_per_job
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def issue(self, job: Job, *, job_id: str, share_target: int, now: float) -> IssuedJob:
        """Remember a job sent to the session; a clean job makes every other tip stale."""
        if not 0 < share_target <= (1 << 256) - 1:
            raise ValueError(f"share_target must be in 1..2**256-1, got {share_target}")
        issued = IssuedJob(job=job, job_id=job_id, share_target=share_target, issued_at=now)
        old = self._entries.pop(job_id, None)
        entry = _Entry(issued)
        # The same work re-sent, under the same id or a new one (a new difficulty): one
        # duplicate memory, or a share resubmitted under the new id would count twice.
        twin = old if old is not None and old.issued.job is job else \
            next((e for e in self._entries.values() if e.issued.job is job), None)
        if twin is not None:
            entry.seen = twin.seen
        self._entries[job_id] = entry
        while len(self._entries) > self.max_jobs:
            self._entries.popitem(last=False)
        if job.clean:
            self.mark_all_stale_except(job.prev_hash_internal)
        return issued

    def get(self, job_id: str) -> IssuedJob | None:
        """The issued job for a session job id, if still remembered."""
        entry = self._entries.get(job_id)
        return entry.issued if entry else None

    def is_stale(self, job_id: str) -> bool:
        """Whether the job's tip has been marked gone."""
        entry = self._entries.get(job_id)
        return entry is not None and entry.stale

    def mark_stale(self, prev_hash_internal: bytes) -> int:
        """Mark every job built on this prev hash stale; returns how many were marked."""
        return self._mark(lambda tip: tip == prev_hash_internal)

    def mark_all_stale_except(self, tip: bytes) -> int:
        """A new tip: mark every job not built on it stale; returns how many were marked."""
        return self._mark(lambda t: t != tip)

    def _mark(self, predicate: Callable[[bytes], bool]) -> int:
        count = 0
        for entry in self._entries.values():
            if not entry.stale and predicate(entry.issued.tip):
                entry.stale = True
                entry.seen = set()  # stale jobs answer STALE before the duplicate check
                count += 1
        return count

    @property
    def latest(self) -> IssuedJob | None:
        """The most recently issued job."""
        return next(reversed(self._entries.values())).issued if self._entries else None

    def shares_seen(self, job_id: str) -> int:
        """How many distinct shares are remembered for the job."""
        entry = self._entries.get(job_id)
        return len(entry.seen) if entry else 0

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

    entry = book._entries.get(job_id)
    if entry is None:
        return ShareResult.rejected(Reject.JOB_NOT_FOUND)
    issued, job = entry.issued, entry.issued.job
    if entry.stale:
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
    key = extranonce + ntime.to_bytes(4, "little") + nonce.to_bytes(4, "little") + version.to_bytes(4, "little")
    if key in entry.seen:
        return ShareResult.rejected(Reject.DUPLICATE, issued)
    if len(entry.seen) >= book.max_shares_per_job:
        return ShareResult.rejected(Reject.TOO_MANY_SHARES, issued)
    entry.seen.add(key)

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
                       share_difficulty=achieved, solution=solution, issued=issued)

