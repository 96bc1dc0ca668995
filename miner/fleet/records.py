"""The records on the fleet bus: a site's desired state (written and signed by the leader)
and its report (written by the site). Pure: bytes in, records out, no I/O.

    DesiredState ──encode_desired(state, signing key)──► canonical JSON with "sig"
    bytes ──decode_desired(data, site, public key)──► DesiredState | RecordError(reason)

Canonical JSON = json.dumps(obj, sort_keys=True, separators=(",", ":")), UTF-8; the
signature is Ed25519 over the canonical JSON of every field but "sig". A revision is
(epoch << 32) | seq: epoch is the lease revision the writing leader won with, seq counts
its writes from 1, so a later leader's revisions are above every earlier leader's.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from miner.sched.model import REASONS

VERSION = 1
SITE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SEQ_BITS = 32
MAX_SEQ = (1 << SEQ_BITS) - 1
MAX_REVISION = (1 << 63) - 1          # JetStream sequences and JSON readers stay within int64
# Bounded rejection reasons (they label gridminer_bus_rejected_total).
REJECT_REASONS = ("malformed", "bad_signature", "wrong_site", "stale_revision", "expired")
MODES = ("following", "fail_safe", "starting")
ACK_OUTCOMES = ("applied", "partial", "failed", "rejected")
# A record larger than this is refused before parsing (a desired state is ~400 bytes; a
# report grows with its devices: 50 devices ~ 8 kB).
MAX_RECORD_BYTES = 1 << 20


class RecordError(ValueError):
    """A record that must not be used; `reason` is one of REJECT_REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_site_name(name: Any) -> str:
    """The name itself when it can be a subject token and a KV key, else ValueError."""
    if not isinstance(name, str) or not SITE_NAME.match(name):
        raise ValueError(f"site name {name!r} cannot be used on the bus: it must match {SITE_NAME.pattern}")
    return name


def canonical_json(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def format_time(when: datetime) -> str:
    """'2026-12-07T08:00:00Z' in UTC; with .ffffff microseconds only when they are not zero."""
    when = when.astimezone(timezone.utc)
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if when.microsecond:
        text += f".{when.microsecond:06d}"
    return text + "Z"


def parse_time(text: Any, field: str) -> datetime:
    if not isinstance(text, str) or not text.endswith("Z") or len(text) > 40:
        raise RecordError("malformed", f"{field}: expected a UTC time like 2026-12-07T08:00:00Z, got {text!r}")
    try:
        when = datetime.fromisoformat(text[:-1])
    except ValueError:
        raise RecordError("malformed", f"{field}: not a time: {text!r}") from None
    if when.tzinfo is not None:
        raise RecordError("malformed", f"{field}: give UTC with a trailing Z only: {text!r}")
    return when.replace(tzinfo=timezone.utc)


def revision_of(epoch: int, seq: int) -> int:
    if not (0 < epoch < (1 << (63 - SEQ_BITS)) and 0 < seq <= MAX_SEQ):
        raise ValueError(f"epoch {epoch} / seq {seq} out of range")
    return (epoch << SEQ_BITS) | seq


# -- keys ----------------------------------------------------------------------------------------

def new_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def signing_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_signing_key(data: bytes) -> Ed25519PrivateKey:
    """A PEM (PKCS#8) Ed25519 private key, or its raw 32-byte seed in hex. ValueError
    (never quoting the key) otherwise."""
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(text, password=None)
        except (ValueError, TypeError):
            raise ValueError("not a readable unencrypted PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the PEM key is not an Ed25519 key")
        return key
    try:
        seed = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError("expected a PEM Ed25519 private key or a 64-hex-digit seed") from None
    if len(seed) != 32:
        raise ValueError(f"an Ed25519 seed is 32 bytes, this one has {len(seed)}")
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def load_public_key(text: str) -> Ed25519PublicKey:
    """The raw 32-byte public key, in hex or base64."""
    text = text.strip()
    raw: bytes | None = None
    if re.fullmatch(r"[0-9A-Fa-f]{64}", text):
        raw = bytes.fromhex(text)
    else:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raw = None
    if raw is None or len(raw) != 32:
        raise ValueError("leader_public_key: expected the raw 32-byte Ed25519 public key in hex (64 digits) "
                         "or base64")
    return Ed25519PublicKey.from_public_bytes(raw)


# -- desired state -------------------------------------------------------------------------------

@dataclass(frozen=True)
class DesiredState:
    site: str
    epoch: int
    seq: int
    level: float
    reason: str
    issued_at: datetime
    valid_until: datetime
    hashprice_usd_per_th_day: float | None
    leader: str

    @property
    def revision(self) -> int:
        return revision_of(self.epoch, self.seq)

    def body(self) -> dict[str, Any]:
        """Every field but the signature, as it goes on the wire."""
        return {"v": VERSION, "site": self.site, "revision": self.revision, "epoch": self.epoch,
                "seq": self.seq, "level": self.level, "reason": self.reason,
                "issued_at": format_time(self.issued_at), "valid_until": format_time(self.valid_until),
                "hashprice_usd_per_th_day": self.hashprice_usd_per_th_day, "leader": self.leader}


def make_desired(site: str, *, epoch: int, seq: int, level: float, reason: str, issued_at: datetime,
                 ttl_seconds: float, hashprice: float | None, leader: str) -> DesiredState:
    """A desired state valid for `ttl_seconds` from `issued_at`; ValueError on a bad field."""
    state = DesiredState(check_site_name(site), epoch, seq, float(level), reason,
                         issued_at, issued_at + timedelta(seconds=ttl_seconds),
                         None if hashprice is None else float(hashprice), leader)
    _check_desired(state)
    return state


def _check_desired(state: DesiredState) -> None:
    if not (math.isfinite(state.level) and 0.0 <= state.level <= 1.0):
        raise ValueError(f"level {state.level!r} is not in [0, 1]")
    if state.reason not in REASONS:
        raise ValueError(f"reason {state.reason!r} is not one of the scheduler's reasons")
    revision_of(state.epoch, state.seq)
    hp = state.hashprice_usd_per_th_day
    if hp is not None and not (math.isfinite(hp) and hp >= 0):
        raise ValueError(f"hashprice {hp!r} is not a number >= 0")
    if not isinstance(state.leader, str) or not state.leader or len(state.leader) > 256:
        raise ValueError("leader: a name of 1..256 characters")


def encode_desired(state: DesiredState, key: Ed25519PrivateKey) -> bytes:
    _check_desired(state)
    body = state.body()
    signed = dict(body, sig=base64.b64encode(key.sign(canonical_json(body))).decode("ascii"))
    return canonical_json(signed)


DESIRED_FIELDS = frozenset({"v", "site", "revision", "epoch", "seq", "level", "reason", "issued_at",
                            "valid_until", "hashprice_usd_per_th_day", "leader", "sig"})


def decode_desired(data: bytes, *, site: str, public_key: Ed25519PublicKey, now: datetime | None = None) -> DesiredState:
    """The verified desired state for `site`, or RecordError with its reason. `now` given:
    a state past its valid_until is "expired". (stale_revision is the caller's check: it
    knows the highest revision it applied.)"""
    obj = _json_object(data)
    _exact_fields(obj, DESIRED_FIELDS, "desired state")
    # Only the canonical bytes are accepted, so no byte of a signed record can change
    # (spacing, key order, number spelling) and still pass as the leader's.
    try:
        canonical = canonical_json(obj)
    except ValueError:
        canonical = b""
    if canonical != bytes(data):
        raise RecordError("malformed", "not in canonical form (sorted keys, no spaces)")
    if obj["v"] != VERSION or isinstance(obj["v"], bool):
        raise RecordError("malformed", f"version {obj['v']!r}, expected {VERSION}")
    sig = obj["sig"]
    if not isinstance(sig, str) or len(sig) > 200:
        raise RecordError("malformed", "sig: expected base64 text")
    try:
        signature = base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError):
        raise RecordError("malformed", "sig: not base64") from None
    body = {k: v for k, v in obj.items() if k != "sig"}
    try:
        public_key.verify(signature, canonical_json(body))
    except InvalidSignature:
        raise RecordError("bad_signature", "signature does not verify under the leader's public key") from None
    state = _desired_fields(obj)
    if state.site != site:
        raise RecordError("wrong_site", f"desired state for site {state.site!r}, this is {site!r}")
    if now is not None and now >= state.valid_until:
        raise RecordError("expired", f"valid until {format_time(state.valid_until)}, now {format_time(now)}")
    return state


def _desired_fields(obj: Mapping[str, Any]) -> DesiredState:
    for name in ("revision", "epoch", "seq"):
        if not _is_int(obj[name]) or not 0 < obj[name] <= MAX_REVISION:
            raise RecordError("malformed", f"{name}: expected a positive integer, got {obj[name]!r}")
    if not isinstance(obj["site"], str) or not SITE_NAME.match(obj["site"]):
        raise RecordError("malformed", f"site: not a site name: {obj['site']!r}")
    level = obj["level"]
    if not _is_number(level) or not 0.0 <= level <= 1.0:
        raise RecordError("malformed", f"level: expected a number in [0, 1], got {level!r}")
    if obj["reason"] not in REASONS:
        raise RecordError("malformed", f"reason: unknown {obj['reason']!r}")
    hp = obj["hashprice_usd_per_th_day"]
    if hp is not None and (not _is_number(hp) or hp < 0):
        raise RecordError("malformed", f"hashprice_usd_per_th_day: expected a number >= 0 or null, got {hp!r}")
    if not isinstance(obj["leader"], str) or not 0 < len(obj["leader"]) <= 256:
        raise RecordError("malformed", "leader: expected a name")
    try:
        revision = revision_of(obj["epoch"], obj["seq"])
    except ValueError as e:
        raise RecordError("malformed", str(e)) from None
    if revision != obj["revision"]:
        raise RecordError("malformed", f"revision {obj['revision']} is not epoch<<32|seq = {revision}")
    issued, until = parse_time(obj["issued_at"], "issued_at"), parse_time(obj["valid_until"], "valid_until")
    if until < issued:
        raise RecordError("malformed", "valid_until is before issued_at")
    return DesiredState(obj["site"], obj["epoch"], obj["seq"], float(level), obj["reason"], issued, until,
                        None if hp is None else float(hp), obj["leader"])


# -- site report ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeviceReport:
    name: str
    up: bool
    hashing: bool
    applied: bool
    hashrate_hs: float
    power_w: float | None
    level: float | None

    def body(self) -> dict[str, Any]:
        return {"name": self.name, "up": self.up, "hashing": self.hashing, "applied": self.applied,
                "hashrate_hs": self.hashrate_hs, "power_w": self.power_w, "level": self.level}


@dataclass(frozen=True)
class Ack:
    revision: int
    outcome: str                 # one of ACK_OUTCOMES
    detail: str
    at: datetime

    def body(self) -> dict[str, Any]:
        return {"revision": self.revision, "outcome": self.outcome, "detail": self.detail,
                "at": format_time(self.at)}


@dataclass(frozen=True)
class SiteReport:
    site: str
    at: datetime
    bus_connected: bool
    mode: str                    # one of MODES
    applied_revision: int | None
    desired_level: float | None
    level: float                 # the level really in force
    hashing: bool
    hashrate_hs: float
    power_w: float | None
    devices: tuple[DeviceReport, ...] = ()
    ack: Ack | None = None

    def body(self) -> dict[str, Any]:
        return {"v": VERSION, "site": self.site, "at": format_time(self.at), "bus_connected": self.bus_connected,
                "mode": self.mode, "applied_revision": self.applied_revision,
                "desired_level": self.desired_level, "level": self.level, "hashing": self.hashing,
                "hashrate_hs": self.hashrate_hs, "power_w": self.power_w,
                "devices": [d.body() for d in self.devices],
                "ack": None if self.ack is None else self.ack.body()}


REPORT_FIELDS = frozenset({"v", "site", "at", "bus_connected", "mode", "applied_revision", "desired_level",
                           "level", "hashing", "hashrate_hs", "power_w", "devices", "ack"})
DEVICE_FIELDS = frozenset({"name", "up", "hashing", "applied", "hashrate_hs", "power_w", "level"})
ACK_FIELDS = frozenset({"revision", "outcome", "detail", "at"})


def encode_report(report: SiteReport) -> bytes:
    body = report.body()
    data = canonical_json(body)
    # One validation for both directions: the body is checked as decode_report checks
    # what it parses from these bytes (JSON gives back exactly these values, so the
    # bytes need not be parsed again).
    _check_size(data)
    _report_of(body, site=report.site)
    return data


def decode_report(data: bytes, *, site: str | None = None) -> SiteReport:
    """A site's report, validated (RecordError "malformed" or "wrong_site" otherwise)."""
    return _report_of(_json_object(data), site=site)


def _report_of(obj: dict[str, Any], *, site: str | None) -> SiteReport:
    _exact_fields(obj, REPORT_FIELDS, "report")
    if obj["v"] != VERSION or isinstance(obj["v"], bool):
        raise RecordError("malformed", f"version {obj['v']!r}, expected {VERSION}")
    name = obj["site"]
    if not isinstance(name, str) or not SITE_NAME.match(name):
        raise RecordError("malformed", f"site: not a site name: {name!r}")
    if site is not None and name != site:
        raise RecordError("wrong_site", f"report names site {name!r}, its key is {site!r}")
    if obj["mode"] not in MODES:
        raise RecordError("malformed", f"mode: unknown {obj['mode']!r}")
    devices = obj["devices"]
    if not isinstance(devices, list) or len(devices) > 10_000:
        raise RecordError("malformed", "devices: expected a list")
    ack = obj["ack"]
    return SiteReport(
        site=name, at=parse_time(obj["at"], "at"), bus_connected=_bool(obj, "bus_connected"), mode=obj["mode"],
        applied_revision=_optional_revision(obj["applied_revision"], "applied_revision"),
        desired_level=_optional_level(obj["desired_level"], "desired_level"),
        level=_level(obj["level"], "level"), hashing=_bool(obj, "hashing"),
        hashrate_hs=_nonnegative(obj["hashrate_hs"], "hashrate_hs"),
        power_w=None if obj["power_w"] is None else _nonnegative(obj["power_w"], "power_w"),
        devices=tuple(_device_report(d) for d in devices),
        ack=None if ack is None else _ack(ack))


def _device_report(obj: Any) -> DeviceReport:
    # The common case, a well-formed entry of plain values, in one pass (a report carries
    # every device of its site); anything else goes through the field-by-field checks.
    if type(obj) is dict and obj.keys() == DEVICE_FIELDS:
        name, rate, power, level = obj["name"], obj["hashrate_hs"], obj["power_w"], obj["level"]
        if (type(name) is str and 0 < len(name) <= 256 and type(obj["up"]) is bool
                and type(obj["hashing"]) is bool and type(obj["applied"]) is bool
                and type(rate) is float and 0.0 <= rate < math.inf
                and (power is None or (type(power) is float and 0.0 <= power < math.inf))
                and (level is None or (type(level) is float and 0.0 <= level <= 1.0))):
            return DeviceReport(name, obj["up"], obj["hashing"], obj["applied"], rate, power, level)
    if not isinstance(obj, dict):
        raise RecordError("malformed", "devices: each entry is an object")
    _exact_fields(obj, DEVICE_FIELDS, "device")
    if not isinstance(obj["name"], str) or not 0 < len(obj["name"]) <= 256:
        raise RecordError("malformed", "device name: expected text")
    return DeviceReport(obj["name"], _bool(obj, "up"), _bool(obj, "hashing"), _bool(obj, "applied"),
                        _nonnegative(obj["hashrate_hs"], "device hashrate_hs"),
                        None if obj["power_w"] is None else _nonnegative(obj["power_w"], "device power_w"),
                        _optional_level(obj["level"], "device level"))


def _ack(obj: Any) -> Ack:
    if not isinstance(obj, dict):
        raise RecordError("malformed", "ack: expected an object or null")
    _exact_fields(obj, ACK_FIELDS, "ack")
    revision = _optional_revision(obj["revision"], "ack revision")
    if revision is None:
        raise RecordError("malformed", "ack revision: expected a positive integer")
    if obj["outcome"] not in ACK_OUTCOMES:
        raise RecordError("malformed", f"ack outcome: unknown {obj['outcome']!r}")
    if not isinstance(obj["detail"], str) or len(obj["detail"]) > 4096:
        raise RecordError("malformed", "ack detail: expected text")
    return Ack(revision, obj["outcome"], obj["detail"], parse_time(obj["at"], "ack at"))


# -- field helpers -------------------------------------------------------------------------------

def _json_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise RecordError("malformed", f"expected bytes, got {type(data).__name__}")
    _check_size(data)
    try:
        obj = json.loads(bytes(data).decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise RecordError("malformed", f"not JSON: {str(e)[:120]}") from None
    if not isinstance(obj, dict):
        raise RecordError("malformed", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _check_size(data: bytes | bytearray | memoryview) -> None:
    if len(data) > MAX_RECORD_BYTES:
        raise RecordError("malformed", f"{len(data)} bytes > {MAX_RECORD_BYTES}")


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _exact_fields(obj: Mapping[str, Any], expected: frozenset[str], what: str) -> None:
    if set(obj) != expected:
        missing, extra = sorted(expected - set(obj)), sorted(set(obj) - expected)[:5]
        raise RecordError("malformed", f"{what} fields: missing {missing}, unexpected {extra}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite JSON number (an integer too large for a float is not one: its float()
    would raise OverflowError)."""
    if type(value) is float:           # the common case, first
        return math.isfinite(value)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _bool(obj: Mapping[str, Any], name: str) -> bool:
    if not isinstance(obj[name], bool):
        raise RecordError("malformed", f"{name}: expected true or false, got {obj[name]!r}")
    return obj[name]


def _level(value: Any, name: str) -> float:
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise RecordError("malformed", f"{name}: expected a number in [0, 1], got {value!r}")
    return float(value)


def _optional_level(value: Any, name: str) -> float | None:
    return None if value is None else _level(value, name)


def _nonnegative(value: Any, name: str) -> float:
    if not _is_number(value) or value < 0:
        raise RecordError("malformed", f"{name}: expected a number >= 0, got {value!r}")
    return float(value)


def _optional_revision(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or not 0 < value <= MAX_REVISION:
        raise RecordError("malformed", f"{name}: expected a positive integer, got {value!r}")
    return value
