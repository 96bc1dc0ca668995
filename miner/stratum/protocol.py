"""Stratum v1 messages, errors, typed parsers and builders: pure functions, no I/O.

Layering follows aiorpcX: framing.py turns bytes into lines, this module turns a line
into a Request / Notification / Response and a request's params into a typed value.
Every failure is an exception carrying what the caller needs for a definite reply:
ProtocolError (the line is not a stratum message; has the id when one could be read)
or StratumError (a well-formed request with bad params; code 20..25).

Byte orders on the wire:

    prevhash            header prevhash (internal order) with each 4-byte word reversed
    coinb1/coinb2       raw bytes as hex
    merkle_branch[i]    internal-order hash as hex (as sha256d returns it)
    version/nbits/ntime big-endian hex of the u32, 8 digits
    submit ntime/nonce  big-endian hex of the u32, exactly 8 digits
    version_bits        big-endian hex of the u32, 8 digits
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Union

from miner.chain.coinbase import CoinbaseTemplate
from miner.chain.header import BlockHeader
from miner.chain.target import bits_to_target
from miner.work.job import Job, Solution

__all__ = [
    "ProtocolError", "StratumError",
    "Request", "Notification", "Response", "Message", "parse_message", "encode",
    "Subscribe", "Authorize", "Configure", "Submit",
    "parse_subscribe", "parse_authorize", "parse_configure", "parse_suggest_difficulty",
    "parse_submit", "parse_extranonce_subscribe", "negotiate_version_rolling",
    "subscribe_result", "configure_result", "notify_params", "notify",
    "set_difficulty", "set_extranonce", "set_version_mask", "reconnect", "show_message", "ping", "get_version",
    "PoolJob", "parse_notify", "parse_subscribe_result", "pool_job_to_job", "submit_params",
    "header_from_share", "solution_from_share",
    "stratum_prevhash_from_internal", "internal_from_stratum_prevhash",
    "hex8", "u32_from_hex8", "BIP320_VERSION_MASK",
]

# BIP320: the version bits a miner may roll (13..28).
BIP320_VERSION_MASK = 0x1FFFE000
_U32 = 0xFFFFFFFF
_HEX = frozenset("0123456789abcdefABCDEF")
# Longest method / worker / job id string we accept: far above anything real,
# low enough that an error message quoting one stays small.
MAX_NAME_CHARS = 256


class ProtocolError(Exception):
    """The line is not a usable stratum message. `id` is the request id when one was read."""

    def __init__(self, message: str, id: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.id = id


class StratumError(Exception):
    """A stratum error reply: `[code, message, null]` on the wire."""

    OTHER = 20
    JOB_NOT_FOUND = 21
    DUPLICATE = 22
    LOW_DIFFICULTY = 23
    UNAUTHORIZED = 24
    NOT_SUBSCRIBED = 25

    def __init__(self, code: int, message: str, traceback: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.traceback = traceback

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, StratumError)
                and (self.code, self.message) == (other.code, other.message))

    def __hash__(self) -> int:
        return hash((self.code, self.message))

    def __repr__(self) -> str:
        return f"StratumError({self.code}, {self.message!r})"

    def to_json(self) -> list:
        return [self.code, self.message, None]

    @classmethod
    def other(cls, message: str) -> StratumError:
        return cls(cls.OTHER, message)

    @classmethod
    def job_not_found(cls) -> StratumError:
        return cls(cls.JOB_NOT_FOUND, "Job not found")

    @classmethod
    def duplicate(cls) -> StratumError:
        return cls(cls.DUPLICATE, "Duplicate share")

    @classmethod
    def low_difficulty(cls) -> StratumError:
        return cls(cls.LOW_DIFFICULTY, "Low difficulty share")

    @classmethod
    def unauthorized(cls) -> StratumError:
        return cls(cls.UNAUTHORIZED, "Unauthorized worker")

    @classmethod
    def not_subscribed(cls) -> StratumError:
        return cls(cls.NOT_SUBSCRIBED, "Not subscribed")

    @classmethod
    def from_json(cls, error: Any) -> StratumError | None:
        """A pool's `error` member: null, [code, msg, tb], {"code", "message"} or a bare string."""
        if error is None:
            return None
        if isinstance(error, str):
            return cls(cls.OTHER, error)
        if isinstance(error, list) and len(error) >= 2:
            code, message = error[0], error[1]
            traceback = error[2] if len(error) > 2 else None
        elif isinstance(error, dict) and "code" in error:
            code, message = error["code"], error.get("message", "")
            traceback = error.get("data")
        else:
            raise ProtocolError(f"unrecognised error shape: {_short(error)}")
        if isinstance(code, bool) or not isinstance(code, int):
            raise ProtocolError(f"error code is not an integer: {_short(code)}")
        if message is None:
            message = ""
        if not isinstance(message, str):
            message = _short(message)
        return cls(code, message, traceback)


# --- messages ------------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    id: Any  # str or int, never None
    method: str
    params: list


@dataclass(frozen=True)
class Notification:
    method: str
    params: list


@dataclass(frozen=True)
class Response:
    id: Any
    result: Any
    error: Any  # the raw error member; StratumError.from_json reads it


Message = Union[Request, Notification, Response]


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, (str, int)) and not isinstance(value, bool))


def parse_message(line: bytes) -> Message:
    """One framed line to a message; ProtocolError (with the id if readable) otherwise."""
    try:
        obj = json.loads(line, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"message is not a JSON object: {type(obj).__name__}")
    msg_id = obj.get("id")
    if not _valid_id(msg_id):
        raise ProtocolError(f"id must be a string, integer or null: {_short(msg_id)}")
    method = obj.get("method")
    if method is None or method == "":
        # Some pools put "method": "" (or null) on responses.
        if "result" in obj or "error" in obj:
            return Response(msg_id, obj.get("result"), obj.get("error"))
        raise ProtocolError("message has neither a method nor a result", msg_id)
    if not isinstance(method, str):
        raise ProtocolError(f"method must be a string: {_short(method)}", msg_id)
    if len(method) > MAX_NAME_CHARS:
        raise ProtocolError("method name too long", msg_id)
    params = obj.get("params")
    if params is None:
        params = []  # seen from some miners on mining.subscribe / extranonce.subscribe
    if not isinstance(params, list):
        raise ProtocolError(f"params must be a list, got {type(params).__name__}", msg_id)
    if msg_id is None:
        return Notification(method, params)
    return Request(msg_id, method, params)


# One encoder for every line: json.dumps with non-default options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode(msg: Message) -> bytes:
    """Compact JSON and a newline."""
    if isinstance(msg, Request):
        obj: dict = {"id": msg.id, "method": msg.method, "params": msg.params}
    elif isinstance(msg, Notification):
        obj = {"id": None, "method": msg.method, "params": msg.params}
    elif isinstance(msg, Response):
        error = msg.error.to_json() if isinstance(msg.error, StratumError) else msg.error
        obj = {"id": msg.id, "result": msg.result, "error": error}
    else:
        raise TypeError(f"not a stratum message: {type(msg).__name__}")
    return _ENCODER.encode(obj).encode() + b"\n"


# --- hex and byte-order helpers ------------------------------------------------------

def _is_hex(s: str) -> bool:
    return all(c in _HEX for c in s)


def hex8(value: int) -> str:
    """A u32 as 8 big-endian hex digits (stratum's version/nbits/ntime/nonce)."""
    if not 0 <= value <= _U32:
        raise ValueError(f"not a u32: {value}")
    return f"{value:08x}"


def u32_from_hex8(s: Any) -> int:
    """Exactly 8 hex digits, big-endian, to a u32; ValueError otherwise."""
    if not isinstance(s, str) or len(s) != 8 or not _is_hex(s):
        raise ValueError(f"expected 8 hex digits, got {_short(s)}")
    return int(s, 16)


def _bytes_from_hex(s: Any) -> bytes:
    if not isinstance(s, str) or len(s) % 2 or not _is_hex(s):
        raise ValueError(f"expected even-length hex, got {_short(s)}")
    return bytes.fromhex(s)


def _swap_words(b: bytes) -> bytes:
    return b"".join(b[i:i + 4][::-1] for i in range(0, len(b), 4))


def stratum_prevhash_from_internal(prev_hash_internal: bytes) -> str:
    """Header prevhash (internal order) to notify's prevhash: each 4-byte word reversed."""
    if len(prev_hash_internal) != 32:
        raise ValueError("prev hash must be 32 bytes")
    return _swap_words(bytes(prev_hash_internal)).hex()


def internal_from_stratum_prevhash(s: Any) -> bytes:
    """Inverse of stratum_prevhash_from_internal; ValueError unless 64 hex digits."""
    if not isinstance(s, str) or len(s) != 64 or not _is_hex(s):
        raise ValueError(f"prevhash must be 64 hex digits, got {_short(s)}")
    return _swap_words(bytes.fromhex(s))


# --- client -> server requests (server side parsing) -----------------------------------

def _name(params: list, index: int, what: str, *, optional: bool = False) -> str | None:
    value = params[index] if index < len(params) else None
    if value is None:
        if optional:
            return None
        raise StratumError.other(f"missing {what}")
    if not isinstance(value, str):
        raise StratumError.other(f"{what} must be a string")
    if len(value) > MAX_NAME_CHARS:
        raise StratumError.other(f"{what} longer than {MAX_NAME_CHARS} characters")
    return value


def _check_list(params: Any) -> list:
    if not isinstance(params, list):
        raise StratumError.other("params must be a list")
    return params


@dataclass(frozen=True)
class Subscribe:
    user_agent: str | None
    session_id: str | None  # the subscription id a reconnecting miner asks to resume


def parse_subscribe(params: list) -> Subscribe:
    """mining.subscribe: `[]`, `[user_agent]` or `[user_agent, session_id, ...]`."""
    params = _check_list(params)
    return Subscribe(_name(params, 0, "user agent", optional=True),
                     _name(params, 1, "session id", optional=True))


@dataclass(frozen=True)
class Authorize:
    worker: str
    password: str


def parse_authorize(params: list) -> Authorize:
    """mining.authorize: `[worker, password]`; the password may be absent or null."""
    params = _check_list(params)
    worker = _name(params, 0, "worker name")
    if not worker:
        raise StratumError.other("empty worker name")
    return Authorize(worker, _name(params, 1, "password", optional=True) or "")


@dataclass(frozen=True)
class Configure:
    extensions: list[str]
    options: dict  # "extension.param" -> value, as BIP310 sends them


def parse_configure(params: list) -> Configure:
    """mining.configure (BIP310): `[[extension, ...], {options}]`."""
    params = _check_list(params)
    if not params or not isinstance(params[0], list):
        raise StratumError.other("configure expects a list of extensions")
    extensions = params[0]
    if not all(isinstance(e, str) and len(e) <= MAX_NAME_CHARS for e in extensions):
        raise StratumError.other("configure extensions must be strings")
    options = params[1] if len(params) > 1 and params[1] is not None else {}
    if not isinstance(options, dict):
        raise StratumError.other("configure options must be an object")
    return Configure(list(extensions), dict(options))


def negotiate_version_rolling(configure: Configure, server_mask: int = BIP320_VERSION_MASK) -> int:
    """The agreed mask: server mask & the miner's "version-rolling.mask" (all bits if absent)."""
    raw = configure.options.get("version-rolling.mask")
    if raw is None:
        return server_mask
    try:
        miner_mask = u32_from_hex8(raw)
    except ValueError:
        raise StratumError.other("version-rolling.mask must be 8 hex digits") from None
    return server_mask & miner_mask


def parse_suggest_difficulty(params: list) -> float:
    """mining.suggest_difficulty: `[d]`, d a number or a numeric string, finite and > 0."""
    params = _check_list(params)
    if not params:
        raise StratumError.other("missing difficulty")
    value = params[0]
    if isinstance(value, bool):
        raise StratumError.other("difficulty must be a number")
    if isinstance(value, str):
        if len(value) > 64:
            raise StratumError.other("difficulty string too long")
        try:
            value = float(value)
        except ValueError:
            raise StratumError.other("difficulty is not a number") from None
    if not isinstance(value, (int, float)):
        raise StratumError.other("difficulty must be a number")
    try:
        d = float(value)
    except OverflowError:
        raise StratumError.other("difficulty out of range") from None
    if not math.isfinite(d) or d <= 0:
        raise StratumError.other("difficulty must be finite and > 0")
    return d


@dataclass(frozen=True)
class Submit:
    worker: str
    job_id: str
    extranonce2: bytes
    ntime: int
    nonce: int
    version_bits: int | None  # BIP310 rolled bits, when the miner sent a 6th param


def parse_submit(params: list) -> Submit:
    """mining.submit: `[worker, job_id, extranonce2, ntime, nonce, (version_bits)]`."""
    params = _check_list(params)
    if not 5 <= len(params) <= 6:
        raise StratumError.other(f"submit expects 5 or 6 params, got {len(params)}")
    worker = _name(params, 0, "worker name")
    job_id = _name(params, 1, "job id")
    try:
        extranonce2 = _bytes_from_hex(params[2])
    except ValueError:
        raise StratumError.other("extranonce2 must be even-length hex") from None
    fields = {}
    for index, what in ((3, "ntime"), (4, "nonce"), (5, "version bits")):
        if index >= len(params) or (index == 5 and params[index] is None):
            continue
        try:
            fields[what] = u32_from_hex8(params[index])
        except ValueError:
            raise StratumError.other(f"{what} must be 8 hex digits") from None
    return Submit(worker, job_id, extranonce2, fields["ntime"], fields["nonce"],
                  fields.get("version bits"))


def parse_extranonce_subscribe(params: list) -> bool:
    """mining.extranonce.subscribe: no params; True (the miner accepts set_extranonce)."""
    params = _check_list(params)
    if params:
        raise StratumError.other("extranonce.subscribe takes no params")
    return True


# --- server -> client builders -------------------------------------------------------

def subscribe_result(extranonce1: bytes, extranonce2_size: int, subscription_id: str) -> list:
    """Result of mining.subscribe."""
    if not 0 <= extranonce2_size <= 255:
        raise ValueError(f"extranonce2_size out of range: {extranonce2_size}")
    subs = [["mining.set_difficulty", subscription_id], ["mining.notify", subscription_id]]
    return [subs, bytes(extranonce1).hex(), extranonce2_size]


def configure_result(version_rolling_mask: int | None, min_difficulty_ok: bool | None,
                     unknown: list[str]) -> dict:
    """Result of mining.configure (BIP310); None leaves an extension out of the answer."""
    result: dict = {}
    if version_rolling_mask is not None:
        result["version-rolling"] = True
        result["version-rolling.mask"] = hex8(version_rolling_mask)
    if min_difficulty_ok is not None:
        result["minimum-difficulty"] = bool(min_difficulty_ok)
    for name in unknown:
        result[name] = False  # BIP310: an unsupported extension is answered false
    return result


def notify_params(job: Job, job_id: str, clean: bool) -> list:
    """The 9 params of mining.notify for a job."""
    return [
        job_id,
        stratum_prevhash_from_internal(job.prev_hash_internal),
        job.coinbase.coinb1.hex(),
        job.coinbase.coinb2.hex(),
        [h.hex() for h in job.merkle_branch],
        hex8(job.version & _U32),
        hex8(job.bits),
        hex8(job.ntime),
        bool(clean),
    ]


def notify(job: Job, job_id: str, clean: bool) -> Notification:
    return Notification("mining.notify", notify_params(job, job_id, clean))


def set_difficulty(difficulty: float) -> Notification:
    if not (math.isfinite(difficulty) and difficulty > 0):
        raise ValueError(f"difficulty must be finite and > 0: {difficulty}")
    # An integral difficulty goes out as an integer: some firmware parses only those.
    value = int(difficulty) if float(difficulty).is_integer() else float(difficulty)
    return Notification("mining.set_difficulty", [value])


def set_extranonce(extranonce1: bytes, extranonce2_size: int) -> Notification:
    return Notification("mining.set_extranonce", [bytes(extranonce1).hex(), extranonce2_size])


def set_version_mask(mask: int) -> Notification:
    """BIP310 mining.set_version_mask: the agreed version-rolling mask changed (valid at once)."""
    return Notification("mining.set_version_mask", [hex8(mask)])


def parse_set_version_mask(params: Any) -> int:
    """A pool's mining.set_version_mask `[mask]` (8 hex digits); ProtocolError otherwise."""
    if not isinstance(params, list) or not params:
        raise ProtocolError("set_version_mask: params must be [mask]")
    try:
        return u32_from_hex8(params[0])
    except ValueError as e:
        raise ProtocolError(f"set_version_mask: {e}") from None


def reconnect(host: str, port: int, wait_seconds: int = 0) -> Notification:
    return Notification("client.reconnect", [host, port, wait_seconds])


def show_message(text: str) -> Notification:
    return Notification("client.show_message", [text])


def ping(request_id: Any) -> Request:
    """mining.ping: a request; the miner answers "pong"."""
    return Request(request_id, "mining.ping", [])


def get_version(request_id: Any) -> Request:
    return Request(request_id, "client.get_version", [])


# --- client side: what an upstream pool sends ----------------------------------------

@dataclass(frozen=True)
class PoolJob:
    job_id: str
    prev_hash_internal: bytes
    coinb1: bytes
    coinb2: bytes
    merkle_branch: tuple[bytes, ...]  # internal order
    version: int
    nbits: int
    ntime: int
    clean: bool


def parse_notify(params: Any) -> PoolJob:
    """mining.notify params to a PoolJob; ProtocolError naming the first bad field."""
    if not isinstance(params, list) or len(params) < 9:
        raise ProtocolError("notify expects 9 params")

    def field(name: str, parse: Any, value: Any) -> Any:
        try:
            return parse(value)
        except (ValueError, TypeError) as exc:
            raise ProtocolError(f"notify {name}: {exc}") from None

    job_id = params[0]
    if not isinstance(job_id, str) or not job_id or len(job_id) > MAX_NAME_CHARS:
        raise ProtocolError(f"notify job_id: bad job id {_short(job_id)}")
    branch = params[4]
    if not isinstance(branch, list):
        raise ProtocolError("notify merkle_branch: not a list")

    def branch_hash(s: Any) -> bytes:
        if not isinstance(s, str) or len(s) != 64:
            raise ValueError(f"expected 64 hex digits, got {_short(s)}")
        return _bytes_from_hex(s)

    nbits = field("nbits", u32_from_hex8, params[6])
    field("nbits", bits_to_target, nbits)
    if not isinstance(params[8], bool):
        raise ProtocolError(f"notify clean_jobs: not a boolean: {_short(params[8])}")
    return PoolJob(
        job_id=job_id,
        prev_hash_internal=field("prevhash", internal_from_stratum_prevhash, params[1]),
        coinb1=field("coinb1", _bytes_from_hex, params[2]),
        coinb2=field("coinb2", _bytes_from_hex, params[3]),
        merkle_branch=tuple(field("merkle_branch", branch_hash, h) for h in branch),
        version=field("version", u32_from_hex8, params[5]),
        nbits=nbits,
        ntime=field("ntime", u32_from_hex8, params[7]),
        clean=params[8],
    )


def parse_subscribe_result(result: Any) -> tuple[bytes, int]:
    """A pool's subscribe result to (extranonce1, extranonce2_size)."""
    if not isinstance(result, list) or len(result) < 3:
        raise ProtocolError("subscribe result must be [subscriptions, extranonce1, size]")
    try:
        extranonce1 = _bytes_from_hex(result[1])
    except ValueError as exc:
        raise ProtocolError(f"subscribe extranonce1: {exc}") from None
    size = result[2]
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= 255:
        raise ProtocolError(f"subscribe extranonce2_size: bad value {_short(size)}")
    return extranonce1, size


def pool_job_to_job(pool_job: PoolJob, extranonce1: bytes, extranonce2_size: int) -> Job:
    """A Job whose extranonce is extranonce1 + extranonce2, between the pool's coinb1/coinb2."""
    return Job(
        job_id=pool_job.job_id,
        prev_hash_internal=pool_job.prev_hash_internal,
        version=pool_job.version,
        bits=pool_job.nbits,
        ntime=pool_job.ntime,
        target=bits_to_target(pool_job.nbits),
        coinbase=CoinbaseTemplate(
            coinb1=pool_job.coinb1,
            coinb2=pool_job.coinb2,
            extranonce_size=len(extranonce1) + extranonce2_size,
        ),
        merkle_branch=pool_job.merkle_branch,
        clean=pool_job.clean,
    )


def submit_params(worker: str, job_id: str, extranonce2: bytes, ntime: int, nonce: int,
                  version_bits: int | None = None) -> list:
    """Params of mining.submit (the 6th only when version rolling is in use)."""
    params = [worker, job_id, bytes(extranonce2).hex(), hex8(ntime), hex8(nonce)]
    if version_bits is not None:
        params.append(hex8(version_bits))
    return params


# --- tying bytes together ------------------------------------------------------------

def _share_version(job: Job, submit: Submit, version_mask: int) -> int:
    if submit.version_bits is None:
        return job.version & _U32
    if submit.version_bits & ~version_mask & _U32:
        raise StratumError.other("version bits outside mask")
    return (job.version & ~version_mask & _U32) | (submit.version_bits & version_mask)


def _share_extranonce(job: Job, extranonce1: bytes, submit: Submit) -> bytes:
    want = job.extranonce_size - len(extranonce1)
    if len(submit.extranonce2) != want:
        raise StratumError.other(f"extranonce2 must be {want} bytes")
    return bytes(extranonce1) + submit.extranonce2


def header_from_share(job: Job, extranonce1: bytes, submit: Submit, version_mask: int) -> BlockHeader:
    """The header a submit claims to have hashed.

    nVersion = (job.version & ~mask) | (version_bits & mask); version bits outside the
    agreed mask are refused (StratumError.other) rather than silently masked, as
    PROTOCOL.md asks. Pass version_mask=0 for a miner that did not negotiate rolling:
    then only a 6th param of 00000000 (or none) is accepted.
    """
    extranonce = _share_extranonce(job, extranonce1, submit)
    return job.header(extranonce, submit.nonce, submit.ntime, _share_version(job, submit, version_mask))


def solution_from_share(job: Job, extranonce1: bytes, submit: Submit, version_mask: int) -> Solution:
    """The Solution for a share, with the same checks as header_from_share."""
    return Solution(job.job_id, _share_extranonce(job, extranonce1, submit), submit.ntime,
                    submit.nonce, _share_version(job, submit, version_mask))
