"""Drivers for miners that speak the cgminer API: our own agent, stock cgminer/bmminer, LuxOS.

Wire format (cgminer's api.c; pyasic's ``rpc/base.py`` speaks the same): open TCP (port
4028), send one request, read the reply, and the miner closes the connection. A JSON
request ``{"command": "summary", "parameter": "0"}`` gets a JSON reply terminated by one
NUL byte; a text request ``summary|0`` gets the text form
``STATUS=S,When=..,Code=11,Msg=Summary,Description=..|SUMMARY,Elapsed=..,MHS av=..|``.
Every reply starts with STATUS: S(uccess), I(nfo), W(arning) are answers, E(rror) and
F(atal) are refusals and become :class:`CgminerError` with the miner's code.

Pure parts (no I/O, property-tested): :class:`ReplyAssembler` (chunks -> one reply, NUL
terminated or cut by EOF), :func:`decode_reply` (JSON or text, with the one bmminer quirk
repaired: ``stats`` rows written ``}{`` without a comma), :func:`check_status`,
:func:`hashrate_hs`. I/O: :class:`CgminerClient`, one connection per command, every
exchange bounded by ``timeout`` seconds.

Devices (``miner.devices.model.Device``):

* :class:`AgentDevice` -- a gridminer agent (``miner.devices.agent_api``): ``pause`` /
  ``resume`` with the shared token, ``summary`` for the rate and the ``Paused`` flag.
* :class:`CgminerDevice` -- an ASIC. Stock Antminer firmware (bmminer/cgminer) has no
  sleep command, so with ``curtail="none"`` level 0 is refused; ``curtail="ascdisable"``
  uses ``ascdisable|N`` / ``ascenable|N`` for each ASC of ``devs`` (cgminer builds that
  offer them); ``curtail="luxos"`` uses LuxOS's session commands: ``logon`` ->
  ``SESSION[0].SessionID``, ``curtail`` with ``<session>,sleep`` / ``<session>,wakeup``,
  ``logoff`` (docs.luxor.tech/firmware/api/luxminer/curtail and .../api/sessions; pyasic
  ``rpc/luxminer.py``), and ``power`` -> ``POWER[0].Watts`` for the draw.

Every failure is a ``DeviceError`` whose ``kind`` attribute is one of ``ERROR_KINDS``, so
the scheduler can count failures by a bounded label.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Mapping
from typing import Any

from miner.devices.model import DeviceError, DeviceReading

log = logging.getLogger(__name__)

DEFAULT_PORT = 4028
MAX_REPLY_BYTES = 4 * 1024 * 1024   # a big rig's stats reply is ~30 kB; anything near this is junk
ERROR_KINDS = ("unreachable", "timeout", "malformed", "refused", "unsupported", "not_applied")
CURTAIL_METHODS = ("none", "luxos", "ascdisable")


def device_error(kind: str, message: str) -> DeviceError:
    """A DeviceError labelled with one of ERROR_KINDS (a bounded metric label)."""
    err = DeviceError(message)
    err.kind = kind  # type: ignore[attr-defined]
    return err


class CgminerError(DeviceError):
    """The miner answered with STATUS E or F: it refused the command."""

    kind = "refused"

    def __init__(self, code: int | None, msg: str, *, command: str = "", severity: str = "E") -> None:
        super().__init__(f"{command or 'command'} refused: STATUS={severity} Code={code} {msg}".strip())
        self.code = code
        self.msg = msg
        self.command = command
        self.severity = severity


# ---------------------------------------------------------------------------------
# pure: reply assembly and decoding


class ReplyAssembler:
    """Joins the chunks of one reply; complete at cgminer's NUL terminator (or at EOF)."""

    def __init__(self, max_bytes: int = MAX_REPLY_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self.complete = False

    def feed(self, chunk: bytes) -> bool:
        """Add a chunk; True once the terminator has arrived. Raises on an oversized reply."""
        if self.complete:
            return True
        nul = chunk.find(b"\x00")
        self._buf += chunk if nul < 0 else chunk[:nul]
        if len(self._buf) > self.max_bytes:
            raise device_error("malformed", f"reply over {self.max_bytes} bytes")
        self.complete = nul >= 0
        return self.complete

    def reply(self) -> bytes:
        """The reply without its terminator (what came so far when EOF cut it)."""
        return bytes(self._buf)


def decode_reply(data: bytes) -> dict[str, Any]:
    """One reply (JSON or cgminer text form) -> dict; DeviceError(kind="malformed") if junk."""
    data = data.split(b"\x00", 1)[0].strip()
    if not data:
        raise device_error("malformed", "empty reply")
    text = data.decode("utf-8", errors="replace")
    if text.startswith("{"):
        obj = _loads(text)
        if obj is None:
            # bmminer writes the STATS rows as [{...}{...}]; pyasic repairs it the same way.
            obj = _loads(text.replace("}{", "},{"))
        if obj is None:
            raise device_error("malformed", f"reply is not JSON: {text[:60]!r}")
    elif text.startswith("STATUS="):
        obj = parse_text_reply(text)
    else:
        raise device_error("malformed", f"reply is neither JSON nor cgminer text: {text[:60]!r}")
    if not isinstance(obj, dict):
        raise device_error("malformed", f"reply is a JSON {type(obj).__name__}, not an object")
    return obj


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _split_unescaped(s: str, sep: str) -> list[str]:
    """Split on `sep` unless backslash-escaped; escapes are kept for the inner splits."""
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(s):
        ch = s[i]
        if ch == "\\" and i + 1 < len(s):
            cur.append(s[i:i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_INT = re.compile(r"[+-]?\d+")
# Sections whose rows start with their id key instead of a "NAME," prefix.
_ROW_ID_SECTIONS = {"STATUS": "STATUS", "ASC": "DEVS", "PGA": "DEVS", "GPU": "DEVS",
                    "POOL": "POOLS", "STATS": "STATS"}


def _text_value(raw: str) -> Any:
    v = _ESCAPE.sub(r"\1", raw)
    if raw in ("true", "false"):
        return raw == "true"
    if _INT.fullmatch(raw):
        return int(raw)
    try:
        f = float(raw)
    except ValueError:
        return v
    return f if math.isfinite(f) else v


def parse_text_reply(text: str) -> dict[str, list[dict[str, Any]]]:
    """cgminer's text form -> the JSON layout: ``{"STATUS": [{...}], "SUMMARY": [{...}]}``."""
    out: dict[str, list[dict[str, Any]]] = {}
    for section in _split_unescaped(text.strip(), "|"):
        if not section:
            continue
        fields = _split_unescaped(section, ",")
        name: str | None = None
        row: dict[str, Any] = {}
        for i, field in enumerate(fields):
            k_raw, sep, v_raw = _partition_unescaped(field, "=")
            if sep:
                key = _ESCAPE.sub(r"\1", k_raw)
                row[key] = _text_value(v_raw)
                if i == 0:
                    name = _ROW_ID_SECTIONS.get(key, key)
            elif i == 0:
                name = _ESCAPE.sub(r"\1", field)
            elif field:
                raise device_error("malformed", f"text reply field without '=': {field[:40]!r}")
        if not name:
            raise device_error("malformed", f"text reply section without a name: {section[:40]!r}")
        out.setdefault(name, []).append(row)
    if "STATUS" not in out:
        raise device_error("malformed", "text reply without STATUS")
    return out


def _partition_unescaped(s: str, sep: str) -> tuple[str, str, str]:
    parts = _split_unescaped(s, sep)
    if len(parts) == 1:
        return s, "", ""
    return parts[0], sep, sep.join(parts[1:])


def check_status(reply: Mapping[str, Any], command: str) -> Mapping[str, Any]:
    """Return `reply` if its STATUS is S/I/W; CgminerError for E/F; malformed otherwise."""
    status = reply.get("STATUS")
    if isinstance(status, list) and status and isinstance(status[0], Mapping):
        st: Mapping[str, Any] = status[0]
    elif isinstance(status, Mapping):
        st = status
    elif isinstance(status, str):  # Whatsminer-style flat replies: {"STATUS": "E", "Code": ..}
        st = {"STATUS": status, "Code": reply.get("Code"), "Msg": reply.get("Msg", "")}
    else:
        raise device_error("malformed", f"{command}: reply has no STATUS")
    severity = str(st.get("STATUS", "")).strip().upper()
    code_num = number(st.get("Code"))
    code = int(code_num) if code_num is not None else None
    msg = str(st.get("Msg", ""))
    if severity in ("S", "I", "W"):
        return reply
    if severity in ("E", "F"):
        raise CgminerError(code, msg, command=command, severity=severity)
    raise device_error("malformed", f"{command}: unknown STATUS {severity[:8]!r}")


def number(v: Any) -> float | None:
    """A finite float from a JSON number or a numeric string ("13,759.68" too), else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        f = float(v)
    elif isinstance(v, str):
        try:
            f = float(v.strip().replace(",", ""))
        except ValueError:
            return None
    else:
        return None
    return f if math.isfinite(f) else None


# Current-rate keys, most recent first, with their unit in H/s. "av" (the average since
# start) is deliberately absent: it stays high for hours after a miner stops.
_RATE_KEYS = (("MHS 5s", 1e6), ("GHS 5s", 1e9), ("THS 5s", 1e12),
              ("MHS 1m", 1e6), ("GHS 1m", 1e9), ("THS 1m", 1e12))


def hashrate_hs(row: Mapping[str, Any]) -> float | None:
    """The current hash rate of a SUMMARY/STATS/DEVS row in H/s, None if it has none."""
    for key, unit in _RATE_KEYS:
        if key in row:
            v = number(row[key])
            if v is not None:
                return max(v, 0.0) * unit
    return None


def rows(reply: Mapping[str, Any], section: str) -> list[Mapping[str, Any]]:
    """The dict rows of one section of a reply ([] when absent)."""
    items = reply.get(section)
    if not isinstance(items, list):
        return []
    return [r for r in items if isinstance(r, Mapping)]


def modelled_power_w(power_w: float | None, hashing: bool, rate_hs: float,
                     nameplate_hs: float | None) -> float | None:
    """Nameplate power scaled by the hash rate (for firmware that does not report watts)."""
    if power_w is None:
        return None
    if not hashing:
        return 0.0
    if nameplate_hs:
        return power_w * min(1.0, rate_hs / nameplate_hs)
    return power_w


def check_level(level: float) -> float:
    level = float(level)
    if not (0.0 <= level <= 1.0):  # also refuses NaN
        raise ValueError(f"power level must be in [0, 1], got {level!r}")
    return level


# ---------------------------------------------------------------------------------
# I/O: the client


class CgminerClient:
    """Async cgminer API client: one TCP connection per command, bounded by `timeout` s.

    `token` is gridminer's agent token: commands sent with ``with_token=True`` carry it as
    a ``"token"`` field (JSON) or as the last parameter (text form), as agent_api expects.
    ``text=True`` speaks the text form for firmware that has no JSON API."""

    def __init__(self, host: str, port: int = DEFAULT_PORT, *, timeout: float = 5.0,
                 token: str | None = None, text: bool = False,
                 max_reply_bytes: int = MAX_REPLY_BYTES) -> None:
        if not (timeout > 0):
            raise ValueError("timeout must be positive")
        self.host = host
        self.port = int(port)
        self.timeout = float(timeout)
        self.token = token or None
        self.text = text
        self.max_reply_bytes = max_reply_bytes

    def __repr__(self) -> str:  # never shows the token
        return f"CgminerClient({self.host!r}, {self.port})"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def encode_request(self, command: str, parameter: Any = None, *, with_token: bool = False,
                       **fields: Any) -> bytes:
        if with_token and not self.token:
            raise device_error("unsupported", f"{self.address}: {command} needs a token and none is set")
        if self.text:
            if fields:
                raise ValueError("the text form carries no extra fields")
            param = None if parameter is None else str(parameter)
            if with_token:
                param = self.token if param is None else f"{param},{self.token}"
            return (command if param is None else f"{command}|{param}").encode("utf-8")
        req: dict[str, Any] = {"command": command, **fields}
        if parameter is not None:
            req["parameter"] = parameter
        if with_token:
            req["token"] = self.token
        return json.dumps(req, separators=(",", ":")).encode("utf-8")

    async def exchange(self, payload: bytes, *, label: str = "request") -> bytes:
        """Send one request, return the raw reply (terminator stripped)."""
        asm = ReplyAssembler(self.max_reply_bytes)
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port)
                try:
                    writer.write(payload)
                    if self.text and writer.can_write_eof():
                        writer.write_eof()  # text requests have no framing: EOF ends them
                    await writer.drain()
                    while not asm.complete:
                        chunk = await reader.read(65536)
                        if not chunk:
                            break
                        asm.feed(chunk)
                finally:
                    writer.close()
        except TimeoutError:
            raise device_error("timeout", f"{self.address}: no complete reply to {label} "
                                          f"within {self.timeout:g} s") from None
        except OSError as e:
            raise device_error("unreachable", f"{self.address}: {label}: "
                                              f"{e.strerror or type(e).__name__}") from None
        return asm.reply()

    async def command(self, command: str, parameter: Any = None, *, with_token: bool = False,
                      **fields: Any) -> dict[str, Any]:
        """Run one command; the decoded reply if its STATUS is S/I/W, else CgminerError."""
        payload = self.encode_request(command, parameter, with_token=with_token, **fields)
        log.debug("cgminer %s: %s", self.address, command)
        raw = await self.exchange(payload, label=command)
        try:
            reply = decode_reply(raw)
            check_status(reply, command)
        except CgminerError:
            raise
        except DeviceError as e:
            log.warning("cgminer %s: %s: %s", self.address, command, e)
            raise device_error("malformed", f"{self.address}: {command}: {e}") from None
        return reply

    async def summary(self) -> dict[str, Any]:
        return await self.command("summary")

    async def stats(self) -> dict[str, Any]:
        return await self.command("stats")

    async def devs(self) -> dict[str, Any]:
        return await self.command("devs")

    async def pools(self) -> dict[str, Any]:
        return await self.command("pools")


async def _current_rate(client: CgminerClient) -> tuple[float, Mapping[str, Any]]:
    """(H/s now, the SUMMARY row), falling back to the STATS rows when SUMMARY has no rate."""
    summary = await client.summary()
    srows = rows(summary, "SUMMARY")
    row = srows[0] if srows else {}
    rate = hashrate_hs(row)
    if rate is None:
        for r in rows(await client.stats(), "STATS"):
            rate = hashrate_hs(r)
            if rate is not None:
                break
    if rate is None:
        raise device_error("malformed", f"{client.address}: neither summary nor stats has a current "
                                        "hash rate (MHS/GHS/THS 5s or 1m)")
    return rate, row


# ---------------------------------------------------------------------------------
# devices


class AgentDevice:
    """A gridminer agent via its cgminer-compatible API: level 0 pauses, any other resumes.

    The agent has no partial load: levels in (0, 1] all mean "hashing". Power is the
    configured nameplate `power_w` (0 while not hashing); the agent reports none."""

    def __init__(self, name: str, host: str, port: int = DEFAULT_PORT, token: str | None = None, *,
                 timeout: float = 5.0, power_w: float | None = None,
                 hashrate_ths: float | None = None, text: bool = False) -> None:
        self.name = name
        self.client = CgminerClient(host, port, timeout=timeout, token=token, text=text)
        self.power_w = power_w
        self.nameplate_hs = hashrate_ths * 1e12 if hashrate_ths else None

    def __repr__(self) -> str:
        return f"AgentDevice({self.name!r}, {self.client.address})"

    async def apply(self, level: float) -> None:
        command = "pause" if check_level(level) <= 0 else "resume"
        reply = await self.client.command(command, with_token=True)
        st = rows(reply, "STATUS")
        log.info("agent %s: %s -> %s", self.name, command, st[0].get("Msg", "") if st else "")

    async def read(self) -> DeviceReading:
        rate, row = await _current_rate(self.client)
        paused = row.get("Paused") is True
        hashing = not paused and rate > 0
        return DeviceReading(hashing=hashing, hashrate_hs=rate,
                             power_w=modelled_power_w(self.power_w, hashing, rate, self.nameplate_hs),
                             level=0.0 if paused else 1.0)


class CgminerDevice:
    """An ASIC on the cgminer API (stock bmminer/cgminer, LuxOS); see the module docstring.

    Curtailment is all-or-nothing: a level in (0, 1] wakes the miner, 0 puts it to sleep
    (LuxOS) or disables its ASCs. Power: what the firmware reports (LuxOS ``power``,
    Whatsminer-style ``Power`` in SUMMARY), else nameplate `power_w` scaled by hash rate."""

    def __init__(self, name: str, host: str, port: int = DEFAULT_PORT, *, curtail: str = "none",
                 power_w: float | None = None, hashrate_ths: float | None = None,
                 timeout: float = 5.0, token: str | None = None, text: bool = False) -> None:
        if curtail not in CURTAIL_METHODS:
            raise ValueError(f"curtail must be one of {', '.join(CURTAIL_METHODS)}, got {curtail!r}")
        self.name = name
        self.curtail = curtail
        self.client = CgminerClient(host, port, timeout=timeout, token=token, text=text)
        self.power_w = power_w
        self.nameplate_hs = hashrate_ths * 1e12 if hashrate_ths else None

    def __repr__(self) -> str:
        return f"CgminerDevice({self.name!r}, {self.client.address}, curtail={self.curtail!r})"

    async def apply(self, level: float) -> None:
        on = check_level(level) > 0
        if self.curtail == "none":
            if not on:
                raise device_error("unsupported", f"{self.name}: cannot curtail: firmware has no sleep "
                                                  "command (configure curtail = \"luxos\" or "
                                                  "\"ascdisable\" if the firmware has one)")
            return  # stock firmware always hashes: nothing to send
        if self.curtail == "luxos":
            if on:
                rate, _ = await _current_rate(self.client)
                if rate > 0:
                    return  # awake: a second wakeup would re-ramp the boards for nothing
            await self._luxos_curtail("wakeup" if on else "sleep")
        else:
            await self._set_ascs(on)

    async def _luxos_curtail(self, action: str) -> None:
        session, created = await self._luxos_session()
        try:
            await self.client.command("curtail", f"{session},{action}")
            log.info("luxos %s: curtail %s sent", self.name, action)
        finally:
            if created:
                try:
                    await self.client.command("logoff", session)
                except DeviceError as e:  # the session expires by itself within a minute
                    log.warning("luxos %s: logoff failed: %s", self.name, e)

    async def _luxos_session(self) -> tuple[str, bool]:
        """(session id, whether we created it). LuxOS allows one session at a time; if
        another is open we reuse it (sessions coordinate writers, they are no security)."""
        try:
            reply = await self.client.command("logon")
            return _session_id(reply, self.client.address), True
        except CgminerError as refused:
            reply = await self.client.command("session")
            try:
                return _session_id(reply, self.client.address), False
            except DeviceError:
                raise refused from None

    async def _set_ascs(self, on: bool) -> None:
        devs = rows(await self.client.devs(), "DEVS")
        ids = [(int(r["ASC"]), str(r.get("Enabled", "Y")).upper() == "Y")
               for r in devs if number(r.get("ASC")) is not None]
        if not ids:
            raise device_error("unsupported", f"{self.name}: devs lists no ASC to "
                                              f"{'enable' if on else 'disable'}")
        command = "ascenable" if on else "ascdisable"
        for asc, enabled in ids:
            if enabled != on:
                await self.client.command(command, str(asc), with_token=self.client.token is not None)
        log.info("cgminer %s: %s on %d ASC(s)", self.name, command, sum(e != on for _, e in ids))

    async def read(self) -> DeviceReading:
        rate, row = await _current_rate(self.client)
        hashing = rate > 0
        watts = number(row.get("Power"))
        if watts is None and self.curtail == "luxos":
            try:
                power_rows = rows(await self.client.command("power"), "POWER")
                watts = number(power_rows[0].get("Watts")) if power_rows else None
            except DeviceError as e:
                log.debug("luxos %s: power unavailable: %s", self.name, e)
        if watts is None:
            watts = modelled_power_w(self.power_w, hashing, rate, self.nameplate_hs)
        return DeviceReading(hashing=hashing, hashrate_hs=rate, power_w=watts,
                             level=1.0 if hashing else 0.0)


def _session_id(reply: Mapping[str, Any], address: str) -> str:
    sess = rows(reply, "SESSION")
    sid = sess[0].get("SessionID") if sess else None
    if not isinstance(sid, str) or not sid or "," in sid:
        raise device_error("malformed", f"{address}: no usable SESSION[0].SessionID in the reply")
    return sid
