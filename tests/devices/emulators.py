"""Device emulators for the driver tests: real servers on 127.0.0.1, free ports, state.

* :class:`CgminerEmulator` -- the cgminer API (TCP 4028 protocol) as bmminer (stock
  Antminer: rates as GH/s strings, ``stats`` rows written ``}{`` without a comma, no
  sleep), cgminer (MH/s, optional ``ascdisable``/``ascenable``) or LuxOS (``logon`` /
  ``session`` / ``logoff`` / ``curtail <session>,sleep|wakeup`` / ``power``). Replies end
  with the NUL byte cgminer sends. Knobs: ``broken`` ("hang", "garbage", "empty",
  "truncated"), ``chunk_size`` (reply written in pieces), ``fail[command]`` (a forced
  error STATUS), ``wake_fails`` (answers wakeup but stays asleep), ``foreign_session``.
* :class:`AxeOSEmulator` -- ESP-Miner's HTTP API (``GET /api/system/info``,
  ``PATCH /api/system``, ``POST /api/system/restart``, ``/pause``, ``/resume``):
  settings go to "NVS" and take effect at the reboot a restart triggers; while rebooting
  the device drops connections. Knobs: ``patch_status``, ``patch_ignored``,
  ``restart_never``, ``restart_abrupt`` (old firmware: reboots without answering),
  ``hashes_after_boot``, ``supports_pause``, ``info_junk``.

Both record every request so tests assert on the exact commands sent. Status codes and
messages follow cgminer's api.c; the LuxOS codes other than 316 (logon) and 335
(curtail), which its docs show, are stand-ins.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from miner.devices.agent_api import to_text

FIRMWARES = ("bmminer", "cgminer", "luxos")
_DESCRIPTION = {"bmminer": "bmminer 1.0.0", "cgminer": "cgminer 4.11.1", "luxos": "LUXminer 2024.5.1"}


class CgminerEmulator:
    """A miner's cgminer API; use as ``async with CgminerEmulator(...) as emu``."""

    def __init__(self, *, firmware: str = "bmminer", hashrate_ghs: float = 13_500.0, chains: int = 3,
                 power_w: float = 1_350.0, sleep_power_w: float = 14.0,
                 asc_commands: bool = False) -> None:
        assert firmware in FIRMWARES
        self.firmware = firmware
        self.hashrate_ghs = hashrate_ghs
        self.power_w = power_w
        self.sleep_power_w = sleep_power_w
        self.asc_commands = asc_commands
        self.enabled = [True] * chains
        self.sleeping = False
        self.wake_fails = False
        self.session: str | None = None
        self.foreign_session: str | None = None   # a session another tool holds
        self.broken: str | None = None
        self.chunk_size: int | None = None
        self.fail: dict[str, tuple[str, int, str]] = {}
        self.requests: list[dict[str, Any]] = []
        self.started = time.time()
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._stop = asyncio.Event()

    # ---- lifecycle ----------------------------------------------------------------

    async def __aenter__(self) -> CgminerEmulator:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            await asyncio.wait_for(self._server.wait_closed(), 2)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    def commands(self) -> list[tuple[str, Any]]:
        """(command, parameter) of every request so far."""
        return [(r.get("command"), r.get("parameter")) for r in self.requests]

    # ---- state --------------------------------------------------------------------

    def chain_ghs(self) -> list[float]:
        per = self.hashrate_ghs / len(self.enabled)
        return [0.0 if self.sleeping or not on else per for on in self.enabled]

    def rate_ghs(self) -> float:
        return sum(self.chain_ghs())

    # ---- connection -----------------------------------------------------------------

    async def _read_request(self, reader: asyncio.StreamReader) -> bytes:
        buf = b""
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(4096), 2.0)
            except asyncio.TimeoutError:
                return buf
            if not chunk:
                return buf
            buf += chunk
            text = buf.rstrip(b"\x00\r\n ")
            if text.startswith(b"{"):
                try:
                    json.loads(text)
                    return buf
                except ValueError:
                    continue
            if buf.endswith((b"\n", b"\x00")):
                return buf

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            raw = (await self._read_request(reader)).strip(b"\x00\r\n ")
            isjson = raw.startswith(b"{")
            if isjson:
                try:
                    req = json.loads(raw)
                except ValueError:
                    req = {"command": None, "raw": raw}
                if not isinstance(req, dict):
                    req = {"command": None, "raw": raw}
            else:
                cmd, sep, param = raw.decode("utf-8", "replace").partition("|")
                req = {"command": cmd, **({"parameter": param} if sep else {})}
            self.requests.append(req)
            if self.broken == "hang":
                await self._stop.wait()
                return
            if self.broken == "empty":
                return
            if self.broken == "garbage":
                data = b"\x89PNG\r\n junk {not json at all\x00"
            else:
                data = self._render(self._reply(req), isjson, req.get("command"))
                if self.broken == "truncated":
                    data = data[: len(data) // 2]
            step = self.chunk_size or len(data)
            for i in range(0, len(data), step):
                writer.write(data[i:i + step])
                await writer.drain()
                if self.chunk_size:
                    await asyncio.sleep(0.005)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def _render(self, reply: dict[str, Any], isjson: bool, command: Any) -> bytes:
        if not isjson:
            return to_text(reply).encode() + b"\x00"
        if self.firmware == "bmminer" and command == "stats" and "STATS" in reply:
            # bmminer's real layout: the STATS rows are not comma separated.
            body = "".join(json.dumps(r) for r in reply["STATS"])
            head = json.dumps({"STATUS": reply["STATUS"]})[1:-1]
            return ('{' + head + ',"STATS":[' + body + '],"id":1}').encode() + b"\x00"
        return json.dumps(dict(reply, id=1)).encode() + b"\x00"

    # ---- replies ------------------------------------------------------------------

    def _status(self, sev: str, code: int, msg: str) -> dict[str, Any]:
        return {"STATUS": [{"STATUS": sev, "When": int(time.time()), "Code": code, "Msg": msg,
                            "Description": _DESCRIPTION[self.firmware]}]}

    def _reply(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("command")
        if not isinstance(cmd, str) or not cmd:
            return self._status("E", 23, "Invalid JSON")
        if cmd in self.fail:
            return self._status(*self.fail[cmd])
        param = req.get("parameter")
        param = None if param is None else str(param)
        handler = getattr(self, f"_cmd_{cmd}", None)
        luxos_only = cmd in ("logon", "logoff", "session", "curtail", "power")
        asc_only = cmd in ("ascenable", "ascdisable")
        if handler is None or (luxos_only and self.firmware != "luxos") or (asc_only and not self.asc_commands):
            return self._status("E", 14, "Invalid command")
        return handler(param)

    def _rate_fields(self, ghs: float, avg_ghs: float) -> dict[str, Any]:
        if self.firmware == "bmminer":
            return {"GHS 5s": f"{ghs:.2f}", "GHS av": round(avg_ghs, 2)}
        if self.firmware == "luxos":
            return {"GHS 5s": round(ghs, 2), "GHS 30m": round(ghs, 2), "GHS av": round(avg_ghs, 2)}
        return {"MHS 5s": round(ghs * 1000, 2), "MHS 1m": round(ghs * 1000, 2), "MHS av": round(avg_ghs * 1000, 2)}

    def _cmd_summary(self, param: str | None) -> dict[str, Any]:
        r = self._status("S", 11, "Summary")
        elapsed = int(time.time() - self.started) + 86_400
        row = {"Elapsed": elapsed, **self._rate_fields(self.rate_ghs(), self.hashrate_ghs),
               "Found Blocks": 0, "Getworks": 4_410, "Accepted": 44_196, "Rejected": 177,
               "Hardware Errors": 371, "Utility": 18.09, "Discarded": 78_796, "Stale": 10,
               "Get Failures": 0, "Local Work": 7_428_563, "Remote Failures": 0, "Network Blocks": 247,
               "Total MH": 2.0185e13, "Work Utility": 192_927.57, "Difficulty Accepted": 4.69e9,
               "Difficulty Rejected": 1.79e7, "Difficulty Stale": 0.0, "Best Share": 20_492_871_957,
               "Device Hardware%": 0.0001, "Device Rejected%": 0.3797, "Pool Rejected%": 0.3797,
               "Pool Stale%": 0.0, "Last getwork": int(time.time())}
        r["SUMMARY"] = [row]
        return r

    def _cmd_stats(self, param: str | None) -> dict[str, Any]:
        r = self._status("S", 70, "CGMiner stats")
        head = {"BMMiner" if self.firmware == "bmminer" else "CGMiner": "4.11.1", "Miner": "uart_trans.1.3",
                "CompileTime": "Sat Jun 24 11:17:59 UTC 2023", "Type": "Antminer S19"}
        row: dict[str, Any] = {"STATS": 0, "ID": "BTM_SOC0", "Elapsed": int(time.time() - self.started),
                               "Calls": 0, "Wait": 0.0, "Max": 0.0, "Min": 99999999.0,
                               **self._rate_fields(self.rate_ghs(), self.hashrate_ghs),
                               "miner_count": len(self.enabled), "frequency": 495, "fan_num": 4,
                               "fan1": 2790, "fan2": 2850, "fan3": 2940, "fan4": 2910,
                               "total_rateideal": self.hashrate_ghs, "rate_unit": "GH"}
        for i, ghs in enumerate(self.chain_ghs(), start=1):
            row[f"chain_acn{i}"] = 110
            row[f"chain_rate{i}"] = f"{ghs:.2f}"
            row[f"temp2_{i}"] = 72 if ghs else 30
        r["STATS"] = [head, row]
        return r

    def _cmd_devs(self, param: str | None) -> dict[str, Any]:
        r = self._status("S", 9, f"{len(self.enabled)} ASC(s)")
        r["DEVS"] = [{"ASC": i, "Name": "BTM_SOC0", "ID": i, "Enabled": "Y" if on else "N",
                      "Status": "Alive", "Temperature": 72.0 if ghs else 30.0,
                      "MHS av": round(self.hashrate_ghs / len(self.enabled) * 1000, 2),
                      "MHS 5s": round(ghs * 1000, 2), "Accepted": 14_000, "Rejected": 60,
                      "Hardware Errors": 120, "Utility": 6.0, "Last Share Pool": 0,
                      "Last Share Time": int(time.time()), "Total MH": 6.7e12}
                     for i, (on, ghs) in enumerate(zip(self.enabled, self.chain_ghs()))]
        return r

    def _cmd_pools(self, param: str | None) -> dict[str, Any]:
        r = self._status("S", 7, "1 Pool(s)")
        r["POOLS"] = [{"POOL": 0, "URL": "stratum+tcp://pool.example:3333", "Status": "Alive",
                       "Priority": 0, "Quota": 1, "Long Poll": "N", "Getworks": 4_410,
                       "Accepted": 44_196, "Rejected": 177, "Stale": 10, "User": "site.rig1",
                       "Stratum Active": True, "Stratum URL": "pool.example",
                       "Difficulty Accepted": 4.69e9, "Difficulty Rejected": 1.79e7}]
        return r

    def _asc_id(self, param: str | None) -> int | None:
        text = (param or "").partition(",")[0].strip()
        try:
            i = int(text)
        except ValueError:
            return None
        return i if 0 <= i < len(self.enabled) else None

    def _cmd_ascdisable(self, param: str | None) -> dict[str, Any]:
        if not param:
            return self._status("E", 15, "Missing device id parameter")
        i = self._asc_id(param)
        if i is None:
            return self._status("E", 107, f"Invalid ASC id {param} - range is 0 - {len(self.enabled) - 1}")
        if not self.enabled[i]:
            return self._status("I", 109, f"ASC {i} already disabled")
        self.enabled[i] = False
        return self._status("I", 111, f"ASC {i} set disable flag")

    def _cmd_ascenable(self, param: str | None) -> dict[str, Any]:
        if not param:
            return self._status("E", 15, "Missing device id parameter")
        i = self._asc_id(param)
        if i is None:
            return self._status("E", 107, f"Invalid ASC id {param} - range is 0 - {len(self.enabled) - 1}")
        if self.enabled[i]:
            return self._status("I", 108, f"ASC {i} already enabled")
        self.enabled[i] = True
        return self._status("I", 110, f"ASC {i} sent enable message")

    # LuxOS (docs.luxor.tech/firmware/api: sessions, curtail)

    def _cmd_logon(self, param: str | None) -> dict[str, Any]:
        if self.session or self.foreign_session:
            return self._status("E", 317, "Another session is active")
        self.session = secrets.token_urlsafe(6)[:8]
        r = self._status("S", 316, "Session created")
        r["SESSION"] = [{"SessionID": self.session}]
        return r

    def _cmd_session(self, param: str | None) -> dict[str, Any]:
        r = self._status("S", 315, "Session")
        r["SESSION"] = [{"SessionID": self.session or self.foreign_session or ""}]
        return r

    def _valid_session(self, sid: str) -> bool:
        return bool(sid) and sid in (self.session, self.foreign_session)

    def _cmd_logoff(self, param: str | None) -> dict[str, Any]:
        if param is None or not self._valid_session(param):
            return self._status("E", 313, "Invalid session")
        if param == self.session:
            self.session = None
        else:
            self.foreign_session = None
        return self._status("S", 318, "Session terminated")

    def _cmd_curtail(self, param: str | None) -> dict[str, Any]:
        sid, _, action = (param or "").partition(",")
        if not self._valid_session(sid):
            return self._status("E", 313, "Invalid session")
        if action == "sleep":
            self.sleeping = True
            label = "sleep mode"
        elif action == "wakeup":
            self.sleeping = self.wake_fails and self.sleeping
            label = "wake up"
        else:
            return self._status("E", 336, f"Invalid curtail action {action}")
        r = self._status("S", 335, "Curtailment command sent")
        r["CURTAIL"] = [{"Action": label}]
        return r

    def _cmd_power(self, param: str | None) -> dict[str, Any]:
        r = self._status("S", 320, "Power")
        r["POWER"] = [{"PSU": True, "Watts": int(self.sleep_power_w if self.sleeping else self.power_w)}]
        return r


# ---------------------------------------------------------------------------------
# AxeOS


class AxeOSEmulator:
    """A Bitaxe's AxeOS HTTP API on a thread; use as ``with AxeOSEmulator(...) as emu``."""

    def __init__(self, *, frequency: int = 525, core_mv: int = 1200, ghs_per_mhz: float = 1.33,
                 restart_lag: float = 0.05, restart_delay: float = 0.2, supports_pause: bool = True) -> None:
        self.lock = threading.Lock()
        self.nvs = {"frequency": frequency, "coreVoltage": core_mv}
        self.running = dict(self.nvs)
        self.ghs_per_mhz = ghs_per_mhz
        self.restart_lag = restart_lag
        self.restart_delay = restart_delay
        self.supports_pause = supports_pause
        self.paused = False
        self.boot_at = time.monotonic()
        self.uptime_at_boot = 1000.0         # it has been up a while when the test starts
        self.reboot_start: float | None = None
        self.reboot_end: float | None = None
        self.restarts = 0
        # knobs
        self.patch_status: int | None = None
        self.patch_ignored = False
        self.restart_never = False
        self.restart_abrupt = False
        self.hashes_after_boot = True
        self.info_junk = False
        self.requests: list[tuple[str, str, Any]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> AxeOSEmulator:
        emu = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                emu._serve(self, "GET")

            def do_PATCH(self) -> None:
                emu._serve(self, "PATCH")

            def do_POST(self) -> None:
                emu._serve(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def paths(self) -> list[tuple[str, str, Any]]:
        with self.lock:
            return list(self.requests)

    # ---- state ------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        """Finish a reboot whose time has come: NVS settings take effect."""
        if self.reboot_end is not None and now >= self.reboot_end:
            self.running = dict(self.nvs)
            self.paused = False
            self.boot_at = self.reboot_end
            self.uptime_at_boot = 0.0
            self.reboot_start = self.reboot_end = None
            self.restarts += 1

    def _down(self, now: float) -> bool:
        return self.reboot_start is not None and now >= self.reboot_start

    def info(self) -> dict[str, Any]:
        now = time.monotonic()
        hashing = not self.paused and (self.hashes_after_boot or self.restarts == 0)
        f, mv = self.running["frequency"], self.running["coreVoltage"]
        ghs = round(f * self.ghs_per_mhz, 2) if hashing else 0.0
        power = round(3.1 + (0.025 * f * (mv / 1000) ** 2 if hashing else 0.0), 2)
        return {
            "power": power, "voltage": 5120.0, "current": round(power / 5.12 * 1000, 1),
            "temp": 58.5 if hashing else 31.0, "vrTemp": 47, "maxPower": 40, "nominalVoltage": 5,
            "hashRate": ghs, "expectedHashrate": round(f * self.ghs_per_mhz, 2),
            "bestDiff": "2.31G", "bestSessionDiff": "87.9M", "freeHeap": 8_410_000,
            "coreVoltage": self.nvs["coreVoltage"], "coreVoltageActual": mv - 7,
            "frequency": self.nvs["frequency"], "ssid": "farm", "macAddr": "24:58:7C:CD:03:E1",
            "hostname": "bitaxe", "wifiStatus": "Connected!", "wifiRSSI": -61, "apEnabled": 0,
            "sharesAccepted": 5120, "sharesRejected": 4, "sharesRejectedReasons": [],
            "uptimeSeconds": int(self.uptime_at_boot + now - self.boot_at),
            "smallCoreCount": 2040, "ASICModel": "BM1368", "stratumURL": "pool.example",
            "stratumPort": 3333, "stratumUser": "site.bitaxe", "stratumSuggestedDifficulty": 1000,
            "stratumExtranonceSubscribe": 0, "fallbackStratumURL": "", "fallbackStratumPort": 3333,
            "fallbackStratumUser": "", "isUsingFallbackStratum": 0, "poolDifficulty": 1000,
            "isPSRAMAvailable": 1, "version": "v2.14.0" if self.supports_pause else "v2.4.2",
            "axeOSVersion": "v2.14.0", "idfVersion": "v5.4.1", "boardVersion": "401",
            "runningPartition": "ota_0", "overheat_mode": 0, "overclockEnabled": 0,
            "invertscreen": 0, "rotation": 0, "displayTimeout": -1, "autofanspeed": 1,
            "fanspeed": 42, "temptarget": 60, "minimumFanSpeed": 25, "fanrpm": 4011,
            "statsFrequency": 0, "power_fault": "", "tempMax": 66, "vrTempMax": 55,
            **({"miningPaused": self.paused} if self.supports_pause else {}),
        }

    # ---- HTTP ---------------------------------------------------------------------

    def _serve(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        now = time.monotonic()
        with self.lock:
            self.requests.append((method, h.path, body))
            self._advance(now)
            if self._down(now):
                h.close_connection = True  # rebooting: the connection drops unanswered
                return
            status, payload = self._route(method, h.path, body, now)
        if status is None:
            h.close_connection = True
            return
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json" if not isinstance(payload, bytes) else "text/plain")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _route(self, method: str, path: str, body: Any, now: float) -> tuple[int | None, Any]:
        if method == "GET" and path == "/api/system/info":
            return 200, (b"<html>captive portal</html>" if self.info_junk else self.info())
        if method == "PATCH" and path == "/api/system":
            if not isinstance(body, dict):
                return 400, b"Invalid JSON"
            if self.patch_status is not None:
                return self.patch_status, b"Failed to save settings"
            if not self.patch_ignored:
                for key in ("frequency", "coreVoltage"):
                    if key in body:
                        self.nvs[key] = int(body[key])
            return 200, b""
        if method == "POST" and path == "/api/system/restart":
            self.reboot_start = now + (0.0 if self.restart_abrupt else self.restart_lag)
            self.reboot_end = float("inf") if self.restart_never else self.reboot_start + self.restart_delay
            if self.restart_abrupt:
                return None, None  # esp_restart() inside the handler: no answer
            return 200, b"System will restart shortly."
        if method == "POST" and path in ("/api/system/pause", "/api/system/resume") and self.supports_pause:
            self.paused = path.endswith("pause")
            return 200, {"message": "Mining paused" if self.paused else "Mining resumed"}
        return 404, b"Not found"
