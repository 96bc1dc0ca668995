"""A cgminer-compatible JSON/text API, so fleet tools can see and curtail a CPU rig.

Wire format (as cgminer's api.c does it; pyasic, Awesome Miner, Foreman and braiins
tools speak it):

* The client opens TCP (port 4028 by convention), sends ONE request and reads to EOF.
  The server answers once, appends a NUL byte (cgminer sends ``strlen(buf) + 1``) and
  closes the connection. Clients strip the trailing ``\\x00`` before ``json.loads``.
* A request that starts with ``{`` is JSON: ``{"command": "summary", "parameter": "0"}``
  and gets a JSON reply. Anything else is the text form ``command|parameter`` and gets
  a text reply (``STATUS=S,When=...,Code=11,Msg=Summary,Description=...|SUMMARY,...|``).
* Every reply starts with a STATUS section:
  ``{"STATUS": [{"STATUS": "S", "When": 1700000000, "Code": 11, "Msg": "Summary",
  "Description": "gridminer/0.1"}], "SUMMARY": [{...}], "id": 1}``.
  STATUS is S(uccess), I(nfo), W(arning), E(rror) or F(atal: a bug on our side).
* Commands joined with ``+`` (``summary+devs``) are answered as one object keyed by
  command: ``{"summary": [{"STATUS": [...], "SUMMARY": [...], "id": 1}],
  "devs": [{...}], "id": 1}``. The parameter is ignored in a joined request,
  duplicates are answered once, and privileged commands are refused (code 45)
  inside a join, as in cgminer.

Privilege. cgminer grants write access by client IP (``--api-allow W:...``); this
server uses a shared token instead. A privileged command carries the token either:

* as a ``"token"`` field: ``{"command": "pause", "token": "<token>"}`` (pyasic:
  ``send_command("pause", token=...)``), or
* in the parameter: ``{"command": "pause", "parameter": "<token>"}`` / ``pause|<token>``;
  for the device commands the parameter is ``<id>,<token>``
  (``ascdisable|0,<token>``), or the id with a ``"token"`` field.

Anything else (no token, wrong token, or no token configured on the server) gets
``Code 45 "Access denied to '<cmd>' command"``. With no token configured the API is
read-only. The server refuses to start on a non-loopback address without a token.

Commands: ``version``, ``config``, ``summary``, ``devs`` (alias ``edevs``), ``pools``,
``stats``, ``asccount``, ``pgacount``, ``check|<cmd>``; privileged: ``pause``,
``resume``, ``ascdisable|0`` / ``pgadisable|0`` (= pause), ``ascenable|0`` /
``pgaenable|0`` (= resume), ``privileged`` (tells whether the token is valid);
``quit`` and ``restart`` are always refused: the API never stops the daemon.

Robustness: one request per connection; a request over ``max_request_bytes``, a
client that sends nothing for ``read_timeout`` seconds, malformed JSON, an unknown
command or a failing ``AgentState`` all get an error STATUS (then close); nothing
raises out of the connection handler. Every error is logged and counted in
``errors_by_reason``.

Metrics (the lead owns miner/metrics.py; suggested additions, used here only if
present on the ``Metrics`` object):

* ``agent_api_requests``: Counter ``gridminer_agent_api_requests_total`` labels
  ``["command"]`` (a known command name or ``"unknown"``),
* ``agent_api_errors``: Counter ``gridminer_agent_api_errors_total`` labels
  ``["reason"]`` (the bounded set in ``ERROR_REASONS``),
* ``agent_api_paused``: Gauge ``gridminer_agent_paused`` (1 while paused).
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import ipaddress
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)

API_VERSION = "3.7"  # the cgminer API version whose layout we follow

# cgminer status codes (api.c MSG_*), plus gridminer's own from 200 up.
MSG_POOL = 7
MSG_NOPOOL = 8
MSG_DEVS = 9
MSG_NODEVS = 10
MSG_SUMM = 11
MSG_INVCMD = 14
MSG_MISID = 15
MSG_VERSION = 22
MSG_INVJSON = 23
MSG_MISCMD = 24
MSG_MINECONFIG = 33
MSG_ACCDENY = 45
MSG_ACCOK = 46
MSG_NUMPGA = 59
MSG_MINESTATS = 70
MSG_MISCHK = 71
MSG_CHECK = 72
MSG_NUMASC = 104
MSG_INVASC = 107
MSG_ASCLRENA = 108
MSG_ASCLRDIS = 109
MSG_ASCENA = 110
MSG_ASCDIS = 111
# gridminer-specific (cgminer has no equivalent)
MSG_PAUSED = 200
MSG_RESUMED = 201
MSG_ALRPAUSED = 202
MSG_ALRRUNNING = 203
MSG_TOOBIG = 210
MSG_TIMEOUT = 211
MSG_REFUSED = 212
MSG_INTERNAL = 213

ERROR_REASONS = (
    "invalid_json", "missing_command", "invalid_command", "access_denied", "refused",
    "invalid_id", "oversized", "timeout", "too_many_connections", "state_error",
    "internal", "empty",
)


class AgentAPIConfigError(ValueError):
    """The server was configured unsafely (e.g. non-loopback bind without a token)."""


@runtime_checkable
class AgentState(Protocol):
    """What the API reads and drives. Rates are hashes per second.

    stats(): elapsed_s, hashes_total, rate_5s, rate_avg, accepted, rejected, stale,
        found_blocks, difficulty_accepted, best_share (the highest share difficulty
        hashed, a float), hardware_errors
        (optional: rate_1m, rate_5m, rate_15m, difficulty_rejected, difficulty_stale,
        last_share_time).
    devices(): one dict per CPU worker group: index, enabled, status ("Alive"/"Idle"),
        rate_5s, rate_avg (optional: name, accepted, rejected, hardware_errors,
        hashes_total, temperature, elapsed_s, last_share_time, difficulty_accepted,
        threads).
    pools(): one dict per pool: url, user, status ("Alive"/"Dead"), priority, accepted,
        rejected, stratum_active, last_share_time (optional: stale, difficulty,
        difficulty_accepted, difficulty_rejected, best_share).
    config(): flat dict of settings shown in CONFIG (secrets are dropped anyway).
    pause()/resume(): stop/restart hashing; may return an awaitable.
    """

    paused: bool

    def stats(self) -> dict[str, Any]: ...

    def devices(self) -> list[dict[str, Any]]: ...

    def pools(self) -> list[dict[str, Any]]: ...

    def config(self) -> dict[str, Any]: ...

    def pause(self) -> Any: ...

    def resume(self) -> Any: ...


# ---------------------------------------------------------------------------------
# helpers


def _num(v: Any, default: float = 0) -> float | int:
    """A JSON-safe number: bools and non-numbers -> default, NaN/inf -> 0."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return default
    if isinstance(v, float) and not math.isfinite(v):
        return 0
    return v


def _mhs(rate_hs: Any) -> float:
    return round(float(_num(rate_hs)) / 1e6, 6)


def _int(v: Any) -> int:
    n = _num(v)
    try:
        return int(n)
    except (OverflowError, ValueError):
        return 0


def _pct(part: float, whole: float) -> float:
    return round(100.0 * part / whole, 4) if whole else 0.0


_SECRET_WORDS = ("pass", "token", "secret", "key", "auth", "cookie")


def _safe_config(cfg: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not isinstance(cfg, dict):
        return out
    for k, v in cfg.items():
        key = str(k)
        if any(w in key.lower() for w in _SECRET_WORDS):
            continue
        if isinstance(v, bool) or v is None or isinstance(v, str):
            out[key] = v
        elif isinstance(v, (int, float)):
            out[key] = _num(v)
    return out


def _text_escape(s: str) -> str:
    out = []
    for ch in s:
        if ch in "|,=\\":
            out.append("\\")
        out.append(ch)
    return "".join(out)


def _text_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return ""
    return _text_escape(str(v))


# Sections whose items carry their own id key (POOL=0,...), not a "NAME," prefix.
_LIST_SECTIONS = {"DEVS", "POOLS", "STATS"}


def to_text(reply: dict[str, Any]) -> str:
    """Render one command's JSON-shaped reply in cgminer's text form."""
    parts: list[str] = []
    for name, items in reply.items():
        if name == "id" or not isinstance(items, list):
            continue
        for item in items:
            fields = ",".join(f"{_text_escape(str(k))}={_text_value(v)}" for k, v in item.items())
            if name == "STATUS" or name in _LIST_SECTIONS:
                parts.append(fields + "|")
            else:
                parts.append(f"{name},{fields}|")
    return "".join(parts)


class _Req:
    """One parsed command of a request."""

    __slots__ = ("cmd", "param", "token", "joined")

    def __init__(self, cmd: str, param: str | None, token: str | None, joined: bool) -> None:
        self.cmd, self.param, self.token, self.joined = cmd, param, token, joined


Handler = Callable[["AgentAPIServer", _Req], Awaitable[dict[str, Any]]]


# ---------------------------------------------------------------------------------
# the server


class AgentAPIServer:
    """cgminer-compatible API over ``asyncio.start_server``; see the module docstring."""

    def __init__(
        self,
        state: AgentState,
        *,
        host: str = "127.0.0.1",
        port: int = 4028,
        token: str | None,
        metrics: Any = None,
        max_request_bytes: int = 65536,
        read_timeout: float = 5.0,
        version: str = "gridminer/0.1",
        max_connections: int = 64,
        request_idle: float = 0.2,
        write_timeout: float = 5.0,
    ) -> None:
        self.state = state
        self.host = host
        self._port = port
        self._token = token or None  # "" means no token
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        self.read_timeout = read_timeout
        self.version = version
        self.max_connections = max_connections
        self.request_idle = request_idle
        self.write_timeout = write_timeout
        self.requests = 0
        self.errors_by_reason: Counter[str] = Counter()
        self.commands_by_name: Counter[str] = Counter()
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    # ---- lifecycle ------------------------------------------------------------

    @staticmethod
    def is_loopback(host: str | None) -> bool:
        if not host:
            return False  # None / "" binds every interface
        if host.strip().lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(host.strip("[]")).is_loopback
        except ValueError:
            return False  # a hostname we cannot vouch for

    def check_config(self) -> None:
        """Raise AgentAPIConfigError if this configuration must not start."""
        if not self.is_loopback(self.host) and not self._token:
            raise AgentAPIConfigError(
                f"agent API: refusing to listen on non-loopback address {self.host!r} without a token "
                "(set a token, or bind to 127.0.0.1)")
        if self.max_request_bytes < 64:
            raise AgentAPIConfigError("agent API: max_request_bytes must be at least 64")
        if not (self.read_timeout > 0):
            raise AgentAPIConfigError("agent API: read_timeout must be positive")

    async def start(self) -> None:
        self.check_config()
        self._server = await asyncio.start_server(self._handle, self.host, self._port,
                                                  limit=max(self.max_request_bytes, 1024))
        log.info("agent API listening on %s:%d (%s)", self.host, self.port,
                 "token set" if self._token else "read-only, no token")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._conns):
                w.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - best effort on shutdown
                pass
            self._server = None

    async def __aenter__(self) -> AgentAPIServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The bound port (useful with port=0)."""
        if self._server is not None and self._server.sockets:
            return self._server.sockets[0].getsockname()[1]
        return self._port

    # ---- accounting -----------------------------------------------------------

    def _count_request(self, cmd: str) -> None:
        label = cmd if cmd in _COMMANDS else "unknown"
        self.commands_by_name[label] += 1
        m = getattr(self.metrics, "agent_api_requests", None)
        if m is not None:
            try:
                m.labels(command=label).inc()
            except Exception:  # noqa: BLE001 - metrics must never break the API
                log.debug("agent API: requests metric failed", exc_info=True)

    def _scrub(self, text: str) -> str:
        """Request text fit for a log line or a reply: the token, wherever a client put it
        (a command, an id), is replaced before anything is cut short."""
        return text.replace(self._token, "<token>") if self._token else text

    def _count_error(self, reason: str, peer: Any, detail: str = "") -> None:
        self.errors_by_reason[reason] += 1
        log.warning("agent API: %s from %s%s", reason, peer, f": {detail}" if detail else "")
        m = getattr(self.metrics, "agent_api_errors", None)
        if m is not None:
            try:
                m.labels(reason=reason).inc()
            except Exception:  # noqa: BLE001
                log.debug("agent API: errors metric failed", exc_info=True)

    def _update_paused_gauge(self) -> None:
        g = getattr(self.metrics, "agent_api_paused", None)
        if g is not None:
            try:
                g.set(1 if self.state.paused else 0)
            except Exception:  # noqa: BLE001
                pass

    # ---- reply building -------------------------------------------------------

    def _status(self, severity: str, code: int, msg: str) -> dict[str, Any]:
        return {"STATUS": [{"STATUS": severity, "When": int(time.time()), "Code": code,
                            "Msg": msg, "Description": self.version}]}

    # ---- connection -----------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer: Any = "?"
        try:
            peer = writer.get_extra_info("peername")
            if len(self._conns) >= self.max_connections:
                self._count_error("too_many_connections", peer)
                return
            self._conns.add(writer)
            raw, reason = await self._read_request(reader)
            if raw is None and reason == "empty":
                self._count_error("empty", peer, "closed without a request")
                return
            reply = await self._respond(raw or b"", reason, peer)
            writer.write(reply)
            await asyncio.wait_for(writer.drain(), self.write_timeout)
            if reason == "oversized":
                # Unread input makes close() send RST, which can destroy the reply in
                # flight: half-close, then discard what the client still sends (bounded).
                await self._discard_input(reader, writer)
        except (ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing to answer
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the handler must never raise
            self.errors_by_reason["internal"] += 1
            log.exception("agent API: unexpected error handling %s", peer)
        finally:
            self._conns.discard(writer)
            try:
                writer.close()
            except Exception:  # noqa: BLE001
                pass

    async def _discard_input(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if writer.can_write_eof():
                writer.write_eof()
            loop = asyncio.get_running_loop()
            deadline, budget = loop.time() + 1.0, 4 * self.max_request_bytes + 65536
            while budget > 0 and loop.time() < deadline:
                chunk = await asyncio.wait_for(reader.read(65536), deadline - loop.time())
                if not chunk:
                    break
                budget -= len(chunk)
        except (OSError, asyncio.TimeoutError):
            pass

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[bytes | None, str | None]:
        """(bytes, None) for a complete request, else (partial-or-None, reason)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout
        buf = bytearray()
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return (bytes(buf) or None), "timeout"
            wait = remaining if not buf else min(remaining, self.request_idle)
            try:
                chunk = await asyncio.wait_for(reader.read(4096), wait)
            except asyncio.TimeoutError:
                if buf and loop.time() < deadline:
                    return bytes(buf), None  # the client stopped sending: take what we have
                return (bytes(buf) or None), "timeout"
            if not chunk:
                return (bytes(buf), None) if buf else (None, "empty")
            buf += chunk
            if len(buf) > self.max_request_bytes:
                return bytes(buf[:64]), "oversized"
            if self._complete(buf):
                return bytes(buf), None

    @staticmethod
    def _complete(buf: bytearray) -> bool:
        data = bytes(buf).rstrip(b"\x00\r\n\t ")
        if not data:
            return False
        if data[:1] == b"{":
            try:
                json.loads(data.decode("utf-8"))
                return True
            except (UnicodeDecodeError, ValueError):
                return False
        return buf.rstrip(b" \t")[-1:] in (b"\n", b"\x00")

    async def _respond(self, raw: bytes, read_error: str | None, peer: Any) -> bytes:
        self.requests += 1
        stripped = raw.strip(b"\x00\r\n\t ")
        # JSON requests get JSON replies, text gets text (as cgminer); a client that
        # sent nothing at all gets JSON, the form nearly every fleet tool speaks.
        isjson = stripped[:1] == b"{" or not stripped
        try:
            reply = await self._dispatch(stripped, isjson, read_error, peer)
        except Exception:  # noqa: BLE001 - a bug answers F, never kills the connection silently
            log.exception("agent API: internal error")
            self._count_error("internal", peer)
            reply = ("single", self._status("F", MSG_INTERNAL, "Internal error"))
        return self._encode(reply, isjson)

    def _encode(self, reply: tuple[str, Any], isjson: bool) -> bytes:
        kind, body = reply
        if isjson:
            if kind == "single":
                obj = dict(body)
                obj["id"] = 1
            else:
                obj = {name: [dict(r, id=1)] for name, r in body}
                obj["id"] = 1
            text = json.dumps(obj, separators=(",", ":"), allow_nan=False, default=str)
        else:
            if kind == "single":
                text = to_text(body)
            else:
                text = "".join(f"CMD={_text_escape(name)}|{to_text(r)}" for name, r in body)
        return text.encode("utf-8") + b"\x00"

    async def _dispatch(self, data: bytes, isjson: bool, read_error: str | None,
                        peer: Any) -> tuple[str, Any]:
        if read_error == "oversized":
            self._count_error("oversized", peer, f"over {self.max_request_bytes} bytes")
            return "single", self._status("E", MSG_TOOBIG,
                                          f"Request too large (max {self.max_request_bytes} bytes)")
        if read_error == "timeout":
            self._count_error("timeout", peer, f"no complete request in {self.read_timeout}s")
            return "single", self._status("E", MSG_TIMEOUT, "Request timed out")

        token: str | None = None
        param: str | None = None
        if isjson:
            try:
                obj = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                obj = None
            if not isinstance(obj, dict):
                self._count_error("invalid_json", peer)
                return "single", self._status("E", MSG_INVJSON, "Invalid JSON")
            if "command" not in obj:
                self._count_error("missing_command", peer)
                return "single", self._status("E", MSG_MISCMD, "Missing JSON 'command'")
            cmd = obj["command"]
            if not isinstance(cmd, str):
                self._count_error("invalid_command", peer, "command is not a string")
                return "single", self._status("E", MSG_INVCMD, "Invalid command")
            p = obj.get("parameter")
            if isinstance(p, str):
                param = p
            elif isinstance(p, int) and not isinstance(p, bool):
                param = str(p)
            elif isinstance(p, float) and math.isfinite(p):
                param = f"{p:f}"
            t = obj.get("token")
            if isinstance(t, str):
                token = t
        else:
            text = data.decode("utf-8", errors="replace")
            cmd, sep, rest = text.partition("|")
            param = rest if sep else None
        cmd = cmd.strip()

        if "+" in cmd:
            results: list[tuple[str, dict[str, Any]]] = []
            seen: set[str] = set()
            for name in cmd.split("+"):
                name = name.strip()
                if not name or name in seen:
                    continue
                seen.add(name)
                if len(results) >= 32:
                    break
                results.append((name, await self._run(_Req(name, None, token, True), peer)))
            if results:
                return "multi", results
            # Nothing but "+": no command at all, answered as an invalid one below.
        return "single", await self._run(_Req(cmd, param, token, False), peer)

    async def _run(self, req: _Req, peer: Any) -> dict[str, Any]:
        self._count_request(req.cmd)
        spec = _COMMANDS.get(req.cmd)
        if spec is None:
            self._count_error("invalid_command", peer, repr(self._scrub(req.cmd)[:40]))
            return self._status("E", MSG_INVCMD, "Invalid command")
        handler, privileged = spec
        if privileged:
            if req.joined:
                self._count_error("access_denied", peer, f"{req.cmd} in a joined request")
                return self._status("E", MSG_ACCDENY, f"Access denied to '{req.cmd}' command")
            if not self._authorised(req):
                self._count_error("access_denied", peer, req.cmd)
                return self._status("E", MSG_ACCDENY, f"Access denied to '{req.cmd}' command")
        try:
            return await handler(self, req)
        except Exception as e:  # noqa: BLE001 - a failing state object is an error reply
            self._count_error("state_error", peer, f"{req.cmd}: {type(e).__name__}: {e}")
            return self._status("E", MSG_INTERNAL, f"{req.cmd} failed: {type(e).__name__}")

    def _authorised(self, req: _Req) -> bool:
        if not self._token:
            return False
        candidates: list[str] = []
        if req.token is not None:
            candidates.append(req.token)
        if req.param is not None:
            if req.cmd in _DEVICE_COMMANDS:
                _, sep, tok = req.param.partition(",")
                if sep:
                    candidates.append(tok)
            else:
                candidates.append(req.param)
        want = self._token.encode("utf-8")
        ok = False
        for c in candidates:  # no early exit: the time taken does not depend on which matched
            ok |= hmac.compare_digest(c.encode("utf-8", errors="replace"), want)
        return ok

    # ---- command handlers -------------------------------------------------------

    async def _cmd_version(self, req: _Req) -> dict[str, Any]:
        r = self._status("S", MSG_VERSION, "CGMiner versions")
        r["VERSION"] = [{"CGMiner": self.version, "API": API_VERSION, "Miner": self.version,
                         "Type": "gridminer CPU"}]
        return r

    async def _cmd_config(self, req: _Req) -> dict[str, Any]:
        devices = self.state.devices()
        pools = self.state.pools()
        r = self._status("S", MSG_MINECONFIG, "CGMiner config")
        cfg: dict[str, Any] = {
            "ASC Count": len(devices), "PGA Count": 0, "Pool Count": len(pools),
            "Strategy": "Failover", "Log Interval": 5, "Device Code": "CPU", "OS": "Linux",
            "Hotplug": "None", "Paused": bool(self.state.paused),
        }
        for k, v in _safe_config(self.state.config()).items():
            cfg.setdefault(k, v)
        r["CONFIG"] = [cfg]
        return r

    async def _cmd_summary(self, req: _Req) -> dict[str, Any]:
        s = self.state.stats()
        elapsed = max(float(_num(s.get("elapsed_s"))), 0.0)
        el = max(elapsed, 1.0)
        acc, rej, stale = _int(s.get("accepted")), _int(s.get("rejected")), _int(s.get("stale"))
        hw = _int(s.get("hardware_errors"))
        d_acc = float(_num(s.get("difficulty_accepted")))
        d_rej = float(_num(s.get("difficulty_rejected")))
        d_stale = float(_num(s.get("difficulty_stale")))
        d_all = d_acc + d_rej + d_stale
        r = self._status("S", MSG_SUMM, "Summary")
        avg, r5 = s.get("rate_avg"), s.get("rate_5s")
        r["SUMMARY"] = [{
            "Elapsed": int(elapsed),
            "MHS av": _mhs(avg),
            "MHS 5s": _mhs(r5),
            "MHS 1m": _mhs(s.get("rate_1m", r5)),
            "MHS 5m": _mhs(s.get("rate_5m", avg)),
            "MHS 15m": _mhs(s.get("rate_15m", avg)),
            "GHS av": round(_mhs(avg) / 1000, 9),
            "GHS 5s": round(_mhs(r5) / 1000, 9),
            "Found Blocks": _int(s.get("found_blocks")),
            "Getworks": 0,
            "Accepted": acc,
            "Rejected": rej,
            "Hardware Errors": hw,
            "Utility": round(acc / el * 60, 4),
            "Discarded": 0,
            "Stale": stale,
            "Get Failures": 0,
            "Local Work": 0,
            "Remote Failures": 0,
            "Network Blocks": 0,
            "Total MH": round(float(_num(s.get("hashes_total"))) / 1e6, 6),
            "Work Utility": round(d_acc / el * 60, 4),
            "Difficulty Accepted": d_acc,
            "Difficulty Rejected": d_rej,
            "Difficulty Stale": d_stale,
            "Best Share": _int(s.get("best_share")),
            # cgminer's field is an integer; shares below difficulty 1 (regtest, tiny
            # miners) would all read 0 there, so the exact figure comes next to it.
            "Best Share Difficulty": float(_num(s.get("best_share"))),
            "Device Hardware%": _pct(hw, hw + acc + rej),
            "Device Rejected%": _pct(d_rej, d_all),
            "Pool Rejected%": _pct(d_rej, d_all),
            "Pool Stale%": _pct(d_stale, d_all),
            "Last getwork": _int(s.get("last_share_time")),
            "Paused": bool(self.state.paused),
        }]
        return r

    def _dev_row(self, i: int, d: dict[str, Any]) -> dict[str, Any]:
        elapsed = max(float(_num(d.get("elapsed_s"))), 1.0)
        acc = _int(d.get("accepted"))
        hw = _int(d.get("hardware_errors"))
        rej = _int(d.get("rejected"))
        status = d.get("status")
        return {
            "ASC": i,
            "Name": str(d.get("name", "CPU"))[:64],
            "ID": _int(d.get("index", i)),
            "Enabled": "Y" if d.get("enabled", True) else "N",
            "Status": status if isinstance(status, str) else "Alive",
            "Temperature": float(_num(d.get("temperature"))),
            "MHS av": _mhs(d.get("rate_avg")),
            "MHS 5s": _mhs(d.get("rate_5s")),
            "Accepted": acc,
            "Rejected": rej,
            "Hardware Errors": hw,
            "Utility": round(acc / elapsed * 60, 4),
            "Last Share Pool": 0 if _int(d.get("last_share_time")) else -1,
            "Last Share Time": _int(d.get("last_share_time")),
            "Total MH": round(float(_num(d.get("hashes_total"))) / 1e6, 6),
            "Diff1 Work": 0,
            "Difficulty Accepted": float(_num(d.get("difficulty_accepted"))),
            "Difficulty Rejected": float(_num(d.get("difficulty_rejected"))),
            "Last Share Difficulty": float(_num(d.get("last_share_difficulty"))),
            "Last Valid Work": _int(d.get("last_share_time")),
            "Device Hardware%": _pct(hw, hw + acc + rej),
            "Device Rejected%": _pct(rej, acc + rej),
            "Device Elapsed": int(elapsed),
            "Threads": _int(d.get("threads")),
        }

    async def _cmd_devs(self, req: _Req) -> dict[str, Any]:
        devices = self.state.devices()
        if not devices:
            return self._status("E", MSG_NODEVS, "No ASCs")
        r = self._status("S", MSG_DEVS, f"{len(devices)} ASC(s)")
        r["DEVS"] = [self._dev_row(i, d if isinstance(d, dict) else {}) for i, d in enumerate(devices)]
        return r

    async def _cmd_pools(self, req: _Req) -> dict[str, Any]:
        pools = self.state.pools()
        if not pools:
            return self._status("E", MSG_NOPOOL, "No pools")
        r = self._status("S", MSG_POOL, f"{len(pools)} Pool(s)")
        rows = []
        for i, p in enumerate(pools):
            p = p if isinstance(p, dict) else {}
            d_acc = float(_num(p.get("difficulty_accepted")))
            d_rej = float(_num(p.get("difficulty_rejected")))
            d_stale = float(_num(p.get("difficulty_stale")))
            d_all = d_acc + d_rej + d_stale
            active = bool(p.get("stratum_active"))
            url = str(p.get("url", ""))
            status = p.get("status")
            rows.append({
                "POOL": i,
                "URL": url,
                "Status": status if isinstance(status, str) else "Dead",
                "Priority": _int(p.get("priority", i)),
                "Quota": 1,
                "Long Poll": "N",
                "Getworks": 0,
                "Accepted": _int(p.get("accepted")),
                "Rejected": _int(p.get("rejected")),
                "Works": 0,
                "Discarded": 0,
                "Stale": _int(p.get("stale")),
                "Get Failures": 0,
                "Remote Failures": 0,
                "User": str(p.get("user", "")),
                "Last Share Time": _int(p.get("last_share_time")),
                "Diff1 Shares": 0,
                "Proxy Type": "",
                "Proxy": "",
                "Difficulty Accepted": d_acc,
                "Difficulty Rejected": d_rej,
                "Difficulty Stale": d_stale,
                "Last Share Difficulty": float(_num(p.get("last_share_difficulty"))),
                "Work Difficulty": float(_num(p.get("difficulty"))),
                "Has Stratum": True,
                "Stratum Active": active,
                "Stratum URL": url if active else "",
                "Stratum Difficulty": float(_num(p.get("difficulty"))) if active else 0.0,
                "Has GBT": False,
                "Best Share": _int(p.get("best_share")),
                "Pool Rejected%": _pct(d_rej, d_all),
                "Pool Stale%": _pct(d_stale, d_all),
            })
        r["POOLS"] = rows
        return r

    async def _cmd_stats(self, req: _Req) -> dict[str, Any]:
        s = self.state.stats()
        r = self._status("S", MSG_MINESTATS, "CGMiner stats")
        rows = []
        for i, d in enumerate(self.state.devices()):
            d = d if isinstance(d, dict) else {}
            rows.append({"STATS": i, "ID": f"CPU{i}", "Elapsed": _int(s.get("elapsed_s")),
                         "Calls": 0, "Wait": 0.0, "Max": 0.0, "Min": 99999999.0,
                         "MHS 5s": _mhs(d.get("rate_5s")), "MHS av": _mhs(d.get("rate_avg")),
                         "Threads": _int(d.get("threads"))})
        r["STATS"] = rows
        return r

    async def _cmd_count(self, req: _Req) -> dict[str, Any]:
        if req.cmd == "asccount":
            r = self._status("S", MSG_NUMASC, "ASC count")
            r["ASCS"] = [{"Count": len(self.state.devices())}]
        else:
            r = self._status("S", MSG_NUMPGA, "PGA count")
            r["PGAS"] = [{"Count": 0}]
        return r

    async def _cmd_check(self, req: _Req) -> dict[str, Any]:
        if not req.param:
            return self._status("E", MSG_MISCHK, "Missing check cmd")
        spec = _COMMANDS.get(req.param)
        r = self._status("S", MSG_CHECK, "Check command")
        r["CHECK"] = [{"Exists": "Y" if spec else "N",
                       "Access": "Y" if spec and (not spec[1] or self._token) else "N"}]
        return r

    async def _cmd_privileged(self, req: _Req) -> dict[str, Any]:
        return self._status("S", MSG_ACCOK, "Privileged access OK")

    async def _set_paused(self, pause: bool) -> bool:
        """Pause or resume; False if it was already in that state."""
        if bool(self.state.paused) == pause:
            return False
        result = self.state.pause() if pause else self.state.resume()
        if inspect.isawaitable(result):
            await result
        self._update_paused_gauge()
        log.warning("agent API: mining %s by API request", "paused" if pause else "resumed")
        return True

    async def _cmd_pause(self, req: _Req) -> dict[str, Any]:
        if await self._set_paused(True):
            return self._status("S", MSG_PAUSED, "Mining paused")
        return self._status("I", MSG_ALRPAUSED, "Mining already paused")

    async def _cmd_resume(self, req: _Req) -> dict[str, Any]:
        if await self._set_paused(False):
            return self._status("S", MSG_RESUMED, "Mining resumed")
        return self._status("I", MSG_ALRRUNNING, "Mining already running")

    async def _cmd_device(self, req: _Req) -> dict[str, Any]:
        kind = "ASC" if req.cmd.startswith("asc") else "PGA"
        idx_text = (req.param or "").partition(",")[0].strip()
        if not idx_text:
            return self._status("E", MSG_MISID, "Missing device id parameter")
        try:
            idx = int(idx_text)
        except ValueError:
            idx = -1
            # Not a number: often the token put where the id goes (`ascdisable|<token>`),
            # or a mistyped one: neither is echoed or logged.
            idx_text = "(not a number)"
        if idx != 0:
            self._count_error("invalid_id", "-", f"{req.cmd} {idx_text[:20]}")
            return self._status("E", MSG_INVASC, f"Invalid {kind} id {idx_text[:20]} - range is 0 - 0")
        if req.cmd.endswith("disable"):
            if await self._set_paused(True):
                return self._status("I", MSG_ASCDIS, f"{kind} 0 set disable flag")
            return self._status("I", MSG_ASCLRDIS, f"{kind} 0 already disabled")
        if await self._set_paused(False):
            return self._status("I", MSG_ASCENA, f"{kind} 0 sent enable message")
        return self._status("I", MSG_ASCLRENA, f"{kind} 0 already enabled")

    async def _cmd_refuse(self, req: _Req) -> dict[str, Any]:
        self._count_error("refused", "-", req.cmd)
        return self._status("E", MSG_REFUSED,
                            f"'{req.cmd}' is not supported by the gridminer agent API")


_DEVICE_COMMANDS = {"ascenable", "ascdisable", "pgaenable", "pgadisable"}

# name -> (handler, privileged)
_COMMANDS: dict[str, tuple[Handler, bool]] = {
    "version": (AgentAPIServer._cmd_version, False),
    "config": (AgentAPIServer._cmd_config, False),
    "summary": (AgentAPIServer._cmd_summary, False),
    "devs": (AgentAPIServer._cmd_devs, False),
    "edevs": (AgentAPIServer._cmd_devs, False),
    "pools": (AgentAPIServer._cmd_pools, False),
    "stats": (AgentAPIServer._cmd_stats, False),
    "asccount": (AgentAPIServer._cmd_count, False),
    "pgacount": (AgentAPIServer._cmd_count, False),
    "check": (AgentAPIServer._cmd_check, False),
    "privileged": (AgentAPIServer._cmd_privileged, True),
    "pause": (AgentAPIServer._cmd_pause, True),
    "resume": (AgentAPIServer._cmd_resume, True),
    "ascenable": (AgentAPIServer._cmd_device, True),
    "ascdisable": (AgentAPIServer._cmd_device, True),
    "pgaenable": (AgentAPIServer._cmd_device, True),
    "pgadisable": (AgentAPIServer._cmd_device, True),
    "quit": (AgentAPIServer._cmd_refuse, True),
    "restart": (AgentAPIServer._cmd_refuse, True),
}

COMMANDS = frozenset(_COMMANDS)
PRIVILEGED_COMMANDS = frozenset(k for k, (_, p) in _COMMANDS.items() if p)
