"""ASIC firmware emulators that speak the wire protocols asic-rs (``pyasic-rs``) uses.

asic-rs addresses a miner by IP only: it probes HTTP on port 80 and the cgminer API on
port 4028 and has no port setting. So each emulated miner gets its own loopback address
(127.0.0.0/8 all routes to ``lo`` on Linux) and listens on the real ports there. Binding
port 80 needs root or CAP_NET_BIND_SERVICE; :func:`can_bind_low_ports` tells.

One :class:`EmulatorHost` runs any number of miners in one asyncio loop: two listening
sockets per miner, nothing per miner but its state, so a benchmark can run thousands.

Families, each answering what asic-rs sends to identify it, read it and control it:

* :class:`LuxOSMiner` -- LuxOS (LUXminer) on an Antminer: the cgminer JSON API on 4028
  (``version`` identifies it by ``LUXminer`` in ``STATUS[0].Description``; ``summary``,
  ``stats``, ``devs``, ``pools``, ``config``, ``power``, ``profiles``, ``fans``,
  ``temps``; ``session`` / ``logon`` / ``logoff`` hand out the session id that
  ``curtail <sid>,sleep|wakeup`` and ``profileset <sid>,<profile>`` need). Replies end
  with a NUL byte and the connection closes, as cgminer does.
* :class:`VNishMiner` -- VNish (AnthillOS web UI) on an Antminer: HTTP JSON under
  ``/api/v1``; ``POST /unlock {"pw"}`` gives a bearer token every other call needs;
  ``info``, ``status``, ``summary``, ``chains``, ``chains/factory-info``, ``settings``
  (GET/POST, ``miner.overclock.preset`` is the power preset), ``autotune/presets``
  (``name`` is the preset's watts), ``mining/stop``, ``mining/start``.
* :class:`BraiinsOSMiner` -- Braiins OS 25.07+ on an Antminer: bosminer's cgminer API on
  4028 (``version`` names ``BOSminer``), GraphQL ``POST /graphql`` for the model and
  version asic-rs picks its backend by, and the REST API under ``/api/v1`` behind
  ``POST /auth/login`` (the token goes bare in ``Authorization``): ``miner/details``
  (``status`` 2 mining, 3 paused), ``miner/stats``, ``configuration/miner`` (the power
  target), ``PUT performance/power-target {"watt"}``, ``PUT actions/pause|resume``.
* :class:`EPicMiner` -- ePIC PowerPlay: HTTP JSON on port 4028 (``/capabilities``,
  ``/summary``; ``POST /miner`` Stop/Autostart and ``POST /perpetualtune/algo`` with the
  password in the body), its dashboard on 80 (``Miner Web Dashboard`` identifies it).
* :class:`AntminerStockMiner` -- stock Bitmain firmware (2023+): the web CGI behind HTTP
  digest auth (realm ``antMiner Configuration``; the 401 on ``GET /`` identifies it),
  ``miner_type.cgi``, ``summary.cgi`` (``INFO.CompileTime`` picks asic-rs's backend),
  ``get_system_info.cgi``, ``get_miner_conf.cgi`` / ``set_miner_conf.cgi`` (work mode 0
  normal, 1 sleep, 2 high, 3 low), and bmminer's cgminer API on 4028 (``version``,
  ``summary``, ``stats`` with ``chain_power``, ``pools``).
* :class:`BitaxeMiner` -- ESP-Miner's AxeOS HTTP API (``GET /`` names AxeOS,
  ``GET /api/system/info``, ``GET /api/system/asic``); no 4028 listener.

Shapes follow the firmware documentation and asic-rs's own test vectors (LuxOS API
reference, VNish 1.3 and Braiins OS 25.07 OpenAPI documents, ESP-Miner ``openapi.yaml``,
Bitmain's CGI as asic-rs and pyasic read it). Every request is recorded in
``miner.requests`` (the oldest half dropped past ``MAX_RECORDED``). ``obey = False`` makes a miner acknowledge control
commands and change nothing (a device that does not obey); ``hang = True`` makes it read
requests and never answer (connections stay open until the client gives up).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import inspect
import json
import random
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any

MAX_REQUEST_BYTES = 64 * 1024     # every request asic-rs sends is well under 2 kB
MAX_RECORDED = 10_000             # requests kept per miner, so long benchmark runs stay small
REQUEST_TIMEOUT_S = 10.0          # a client that sends nothing for this long is dropped
HTTP_PORT = 80
RPC_PORT = 4028


def can_bind_low_ports() -> bool:
    """True when this process may listen on port 80 of a loopback address."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        s.close()
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.254.254.254", HTTP_PORT))
        return True
    except PermissionError:
        return False
    except OSError as e:
        return e.errno == errno.EADDRINUSE  # someone else holds it: we may bind low ports
    finally:
        s.close()


def raise_open_file_limit() -> int:
    """Lift the soft open-file limit to the hard one (two sockets per miner add up); returns it."""
    try:
        import resource
    except ImportError:   # not on this platform
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


HttpReply = tuple[Any, ...]   # (status, content type, body[, extra headers])


@dataclass
class Request:
    """One request a miner received: protocol, command or "METHOD /path", parameter/body."""

    protocol: str       # "rpc" or "http"
    command: str
    param: Any = None


class EmulatedMiner:
    """State shared by the families: hashing or not, the power it runs at, what it was sent."""

    # port -> what listens there: "http" (miner.http) or "rpc" (the cgminer API, miner.rpc)
    ports: dict[int, str] = {HTTP_PORT: "http", RPC_PORT: "rpc"}

    def __init__(self, *, ths: float, watts: float, idle_watts: float = 12.0) -> None:
        self.ths = float(ths)               # hash rate at the current setting, hashing
        self.watts = float(watts)           # draw at the current setting, hashing
        self.idle_watts = float(idle_watts)
        self.hashing = True
        self.obey = True
        self.hang = False
        self.requests: list[Request] = []
        self.started = time.time()
        self.mac = "02:00:%02x:%02x:%02x:%02x" % tuple(secrets.token_bytes(4))

    def rate_ghs(self) -> float:
        return self.ths * 1000.0 if self.hashing else 0.0

    def power_w(self) -> float:
        return self.watts if self.hashing else self.idle_watts

    def uptime_s(self) -> int:
        return int(time.time() - self.started)

    def record(self, request: Request) -> None:
        if len(self.requests) >= MAX_RECORDED:
            del self.requests[:MAX_RECORDED // 2]
        self.requests.append(request)

    def commands(self, protocol: str | None = None) -> list[str]:
        return [r.command for r in self.requests if protocol in (None, r.protocol)]

    # The servers call these; a family overrides the one(s) it speaks.
    def rpc(self, command: str, param: Any) -> dict[str, Any]:
        return cgminer_status("E", 14, "Invalid command")

    def http(self, method: str, path: str, headers: dict[str, str], body: bytes) -> HttpReply:
        return 404, "text/plain", b"not found"


def cgminer_status(severity: str, code: int, msg: str, description: str = "cgminer 4.11.1") -> dict[str, Any]:
    return {"STATUS": [{"STATUS": severity, "When": int(time.time()), "Code": code, "Msg": msg,
                        "Description": description}], "id": 1}


def _json(status: int, obj: Any) -> HttpReply:
    return status, "application/json", json.dumps(obj).encode()


# ---------------------------------------------------------------------------------
# LuxOS


@dataclass(frozen=True)
class LuxProfile:
    name: str
    frequency_mhz: int
    ths: float
    watts: float


LUXOS_S19K_PROFILES = (
    LuxProfile("190MHz", 190, 39.2, 784), LuxProfile("240MHz", 240, 49.5, 978),
    LuxProfile("290MHz", 290, 59.8, 1188), LuxProfile("340MHz", 340, 70.2, 1414),
)


class LuxOSMiner(EmulatedMiner):
    """An Antminer S19k Pro on LuxOS: cgminer JSON API with sessions, curtail and profiles."""

    version = "2025.4.8.220305-57b389c7"
    model = "Antminer S19k Pro"

    def __init__(self, *, profiles: tuple[LuxProfile, ...] = LUXOS_S19K_PROFILES,
                 profile: str = "290MHz", idle_watts: float = 14.0) -> None:
        self.profiles = {p.name: p for p in profiles}
        p = self.profiles[profile]
        super().__init__(ths=p.ths, watts=p.watts, idle_watts=idle_watts)
        self.profile = profile
        self.session: str | None = None

    @property
    def description(self) -> str:
        return f"LUXminer {self.version}"

    def _ok(self, code: int, msg: str, **sections: Any) -> dict[str, Any]:
        out = cgminer_status("S", code, msg, self.description)
        out.update(sections)
        return out

    def _err(self, code: int, msg: str) -> dict[str, Any]:
        return cgminer_status("E", code, msg, self.description)

    def http(self, method: str, path: str, headers: dict[str, str], body: bytes) -> HttpReply:
        if method == "GET" and path == "/":
            return 200, "text/html", b"<!doctype html><html><head><title>Luxor Firmware</title></head></html>"
        return 404, "text/plain", b"not found"

    def rpc(self, command: str, param: Any) -> dict[str, Any]:
        handler = getattr(self, "_cmd_" + command, None)
        if handler is None:
            return self._err(14, "Invalid command")
        return handler(param)

    def _board_ghs(self) -> list[float]:
        return [self.rate_ghs() / 3] * 3

    def _cmd_version(self, param: Any) -> dict[str, Any]:
        return self._ok(22, "LUXminer versions", VERSION=[{
            "API": "3.7", "LUXminer": self.version, "Miner": self.version.split("-")[0],
            "CompileTime": "Tue Apr  8 22:05:35 UTC 2025", "Type": self.model}])

    def _cmd_config(self, param: Any) -> dict[str, Any]:
        return self._ok(33, "LUXminer config", CONFIG=[{
            "ASC Count": 3, "ControlBoardType": "cvitek", "Cooling": "Air",
            "CurtailMode": "None" if self.hashing else "Sleep", "Hostname": "luxos-emu",
            "IsAtmEnabled": False, "IsPowerSupplyOn": True, "IsTuning": False,
            "MACAddr": self.mac, "Model": self.model, "NameplateTHS": 121.8, "OS": "LuxOS",
            "Profile": self.profile, "RedLed": "off", "SerialNumber": "EMU" + self.mac.replace(":", ""),
            "SystemStatus": "Normal"}])

    def _cmd_summary(self, param: Any) -> dict[str, Any]:
        ghs = self.rate_ghs()
        return self._ok(11, "Summary", SUMMARY=[{
            "Elapsed": self.uptime_s(), "GHS 5s": ghs, "GHS av": ghs, "GHS 1m": ghs, "GHS 5m": ghs,
            "GHS 15m": ghs, "Accepted": 0, "Rejected": 0, "Hardware Errors": 0, "Best Share": 0}])

    def _cmd_stats(self, param: Any) -> dict[str, Any]:
        ghs = self._board_ghs()
        row: dict[str, Any] = {"STATS": 0, "ID": "BTM_SOC0", "Elapsed": self.uptime_s(),
                               "GHS 5s": self.rate_ghs(), "GHS av": self.rate_ghs(), "miner_count": 3,
                               "fan_num": 4, "rate_unit": "GH",
                               "frequency": self.profiles[self.profile].frequency_mhz}
        for i in range(1, 5):
            row[f"chain_rate{i}"] = f"{ghs[i - 1]:.2f}" if i <= 3 else "0"
            row[f"chain_acn{i}"] = 77 if i <= 3 else 0
            row[f"temp{i}"] = 47.0 if i <= 3 else 0.0
            row[f"fan{i}"] = 1920
        return self._ok(70, "CGMiner stats", STATS=[
            {"CompileTime": "Tue Apr  8 22:05:35 UTC 2025", "Miner": self.version.split("-")[0],
             "Type": self.model}, row])

    def _cmd_devs(self, param: Any) -> dict[str, Any]:
        rows = [{"ASC": i, "ID": i, "Enabled": "Y", "Status": "Alive", "Temperature": 47.0,
                 "MHS 5s": g * 1000, "MHS av": g * 1000, "Nominal MHS": g * 1000,
                 "Profile": self.profile, "Connector": f"J{7 + i}", "SerialNumber": f"EMUBOARD{i}",
                 "IsUserShutdown": not self.hashing}
                for i, g in enumerate(self._board_ghs())]
        return self._ok(9, f"{len(rows)} ASC(s)", DEVS=rows)

    def _cmd_pools(self, param: Any) -> dict[str, Any]:
        return self._ok(7, "1 Pool(s)", POOLS=[{
            "POOL": 0, "URL": "stratum+tcp://127.0.0.1:3333", "User": "emu", "Status": "Alive",
            "Stratum Active": self.hashing, "Accepted": 0, "Rejected": 0, "GROUP": 0, "Priority": 0}])

    def _cmd_groups(self, param: Any) -> dict[str, Any]:
        return self._ok(309, "Groups", GROUPS=[{"GROUP": 0, "Name": "Default", "Quota": 1}])

    def _cmd_power(self, param: Any) -> dict[str, Any]:
        return self._ok(311, "Power usage", POWER=[{"PSU": False, "Watts": round(self.power_w())}])

    def _cmd_profiles(self, param: Any) -> dict[str, Any]:
        return self._ok(327, "Profiles", PROFILES=[{
            "Profile Name": p.name, "Frequency": p.frequency_mhz, "Hashrate": p.ths, "Watts": p.watts,
            "Voltage": 11.88, "Step": str(i - 12), "IsDynamic": True, "IsTuned": p.name == self.profile,
            "CanRestore": True, "HasOverrides": False} for i, p in enumerate(self.profiles.values())])

    def _cmd_fans(self, param: Any) -> dict[str, Any]:
        return self._ok(202, "4 Fan(s)", FANS=[{"ID": i, "RPM": 1920, "Speed": 40} for i in range(4)])

    def _cmd_temps(self, param: Any) -> dict[str, Any]:
        return self._ok(201, "3 Temp(s)", TEMPS=[{"ID": i, "Board": 47.0, "Chip": 55.0} for i in range(3)])

    def _cmd_events(self, param: Any) -> dict[str, Any]:
        return self._ok(300, "Events", EVENTS=[])

    def _cmd_session(self, param: Any) -> dict[str, Any]:
        return self._ok(315, "Session", SESSION=[{"SessionID": self.session or ""}])

    def _cmd_logon(self, param: Any) -> dict[str, Any]:
        if self.session is not None:
            return self._err(327, "Another session is active")
        self.session = secrets.token_hex(4)
        return self._ok(316, "Logon", SESSION=[{"SessionID": self.session}])

    def _session_args(self, param: Any, n: int) -> list[str] | dict[str, Any]:
        parts = str(param or "").split(",")
        if len(parts) != n or not parts[0]:
            return self._err(332, "Invalid parameters")
        if self.session is None or parts[0] != self.session:
            return self._err(313, "Invalid session id")
        return parts

    def _cmd_logoff(self, param: Any) -> dict[str, Any]:
        args = self._session_args(param, 1)
        if isinstance(args, dict):
            return args
        self.session = None
        return self._ok(317, "Logoff")

    def _cmd_curtail(self, param: Any) -> dict[str, Any]:
        args = self._session_args(param, 2)
        if isinstance(args, dict):
            return args
        if args[1] not in ("sleep", "wakeup"):
            return self._err(332, f"Invalid curtail mode {args[1]}")
        if self.obey:
            self.hashing = args[1] == "wakeup"
        return self._ok(335, "Curtail", CURTAIL=[{"Mode": args[1]}])

    def _cmd_profileset(self, param: Any) -> dict[str, Any]:
        args = self._session_args(param, 2)
        if isinstance(args, dict):
            return args
        p = self.profiles.get(args[1])
        if p is None:
            return self._err(334, f"Unknown profile {args[1]}")
        if self.obey:
            self.profile, self.ths, self.watts = p.name, p.ths, p.watts
        return self._ok(336, "Profile set", PROFILE=[{"Profile": p.name}])


# ---------------------------------------------------------------------------------
# VNish


@dataclass(frozen=True)
class VNishPreset:
    watts: int
    ths: float
    tuned: bool = True


VNISH_S19JPRO_PRESETS = (VNishPreset(1800, 70.0), VNishPreset(2400, 88.0), VNishPreset(3000, 104.0),
                         VNishPreset(3400, 114.0, tuned=False))


class VNishMiner(EmulatedMiner):
    """An Antminer S19j Pro on VNish 1.3: the AnthillOS REST API with a bearer token."""

    ports = {HTTP_PORT: "http"}
    fw_version = "1.3.4"
    model = "Antminer S19j Pro"

    def __init__(self, *, password: str = "admin", presets: tuple[VNishPreset, ...] = VNISH_S19JPRO_PRESETS,
                 preset: int = 3000, idle_watts: float = 15.0) -> None:
        self.presets = {p.watts: p for p in presets}
        p = self.presets[preset]
        super().__init__(ths=p.ths, watts=p.watts, idle_watts=idle_watts)
        self.password = password
        self.preset = preset
        self.tokens: set[str] = set()

    def http(self, method: str, path: str, headers: dict[str, str], body: bytes) -> HttpReply:
        if method == "GET" and path == "/":
            return 200, "text/html", b"<!doctype html><html><head><title>AnthillOS</title></head></html>"
        if not path.startswith("/api/v1/"):
            return 404, "text/plain", b"not found"
        route = path[len("/api/v1/"):]
        if method == "POST" and route == "unlock":
            try:
                pw = json.loads(body or b"{}").get("pw")
            except (ValueError, AttributeError):
                return _json(400, {"err": "bad request"})
            if pw != self.password:
                return _json(401, {"err": "wrong password"})
            token = secrets.token_hex(16)
            self.tokens.add(token)
            return _json(200, {"token": token})
        if method == "GET" and route == "info":   # public, the web UI's login page reads it
            return _json(200, self._info())
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
            return _json(401, {"err": "unauthorized"})
        handler = getattr(self, f"_{method.lower()}_{route.replace('/', '_').replace('-', '_')}", None)
        if handler is None:
            return _json(404, {"err": "not found"})
        return handler(body)

    def _state(self) -> str:
        return "mining" if self.hashing else "stopped"

    def _info(self) -> dict[str, Any]:
        return {"miner": self.model, "model": "s19jpro", "fw_name": "Vnish", "fw_version": self.fw_version,
                "build_time": "2025-03-01", "platform": "xil", "install_type": "nand",
                "serial": "EMU" + self.mac.replace(":", ""),
                "system": {"os": "GNU/Linux", "uptime": f"{self.uptime_s()} s",
                           "network_status": {"mac": self.mac, "ip": "127.0.0.1", "netmask": "255.0.0.0",
                                              "gateway": "127.0.0.1", "dns": [], "hostname": "vnish-emu",
                                              "dhcp": False}}}

    def _get_status(self, body: bytes) -> HttpReply:
        return _json(200, {"miner_state": self._state(), "miner_state_time": self.uptime_s(),
                           "find_miner": False, "restart_required": False, "reboot_required": False,
                           "unlocked": True})

    def _get_summary(self, body: bytes) -> HttpReply:
        ghs = self.rate_ghs()
        chains = [{"id": i + 1, "status": {"state": "mining" if self.hashing else "stopped"},
                   "hashrate_rt": ghs / 3, "hashrate_ideal": ghs / 3, "frequency": 525,
                   "voltage": 13400, "power_consumption": round(self.power_w() / 3),
                   "chip_temp": {"min": 60, "max": 70}, "pcb_temp": {"min": 50, "max": 55},
                   "chip_statuses": {"red": 0, "orange": 0, "grey": 0}} for i in range(3)]
        return _json(200, {"miner": {
            "miner_type": self.model, "miner_status": {"miner_state": self._state(),
                                                       "miner_state_time": self.uptime_s(), "throttled": 100},
            "hr_stock": 104000.0, "hr_realtime": ghs, "hr_nominal": ghs, "hr_average": ghs,
            "average_hashrate": ghs, "instant_hashrate": ghs,
            "power_consumption": round(self.power_w()), "power_usage": round(self.power_w()),
            "power_efficiency": 29.0, "pcb_temp": {"min": 50, "max": 55}, "chip_temp": {"min": 60, "max": 70},
            "hw_errors_percent": 0.0, "hr_error": 0.0, "hw_errors": 0, "devfee_percent": 2.8, "devfee": 0.0,
            "pools": [{"id": 1, "url": "stratum+tcp://127.0.0.1:3333", "user": "emu", "status": "working",
                       "accepted": 0, "rejected": 0}],
            "cooling": {"fan_num": 4, "fans": [{"id": i, "rpm": 3600, "status": "ok", "max_rpm": 6000}
                                               for i in range(4)], "settings": {"mode": {"name": "auto"}}},
            "chains": chains, "found_blocks": 0, "best_share": 0, "restart_count": 0}})

    def _get_chains(self, body: bytes) -> HttpReply:
        return _json(200, [])

    def _get_chains_factory_info(self, body: bytes) -> HttpReply:
        return _json(200, {"hr_stock": 104000.0, "psu_serial": None, "boards": []})

    def _settings(self) -> dict[str, Any]:
        return {"miner": {"overclock": {"preset": str(self.preset), "globals": {"volt": 1340, "freq": 525}},
                          "pools": [{"url": "stratum+tcp://127.0.0.1:3333", "user": "emu", "pass": "x"}]},
                "ui": {}, "regional": {}, "network": {}}

    def _get_settings(self, body: bytes) -> HttpReply:
        return _json(200, self._settings())

    def _post_settings(self, body: bytes) -> HttpReply:
        try:
            new = json.loads(body or b"{}")
            preset = new.get("miner", {}).get("overclock", {}).get("preset")
        except (ValueError, AttributeError):
            return _json(400, {"err": "invalid settings"})
        if preset is not None:
            try:
                p = self.presets[int(preset)]
            except (ValueError, KeyError):
                return _json(400, {"err": f"unknown preset {preset!r}"})
            if self.obey:
                self.preset, self.ths, self.watts = p.watts, p.ths, p.watts
        return _json(200, {"restart_required": False, "reboot_required": False})

    def _get_autotune_presets(self, body: bytes) -> HttpReply:
        return _json(200, [{"name": str(p.watts), "pretty": f"{p.watts} watt ~ {p.ths:g} TH",
                            "status": "tuned" if p.tuned else "untuned",
                            "modded_psu_required": False} for p in self.presets.values()])

    def _post_mining_stop(self, body: bytes) -> HttpReply:
        if self.obey:
            self.hashing = False
        return _json(200, {})

    def _post_mining_start(self, body: bytes) -> HttpReply:
        if self.obey:
            self.hashing = True
        return _json(200, {})


# ---------------------------------------------------------------------------------
# Braiins OS


class BraiinsOSMiner(EmulatedMiner):
    """An Antminer S19 XP on Braiins OS 25.07: REST with a login token, power targets, pause."""

    model = "Antminer S19 XP"
    version = "2025-08-06-0-3881c51d-25.07-plus"
    nominal_ths, nominal_watts = 141.0, 3137.0
    min_watts, max_watts = 1000, 4000     # the tuner's accepted power-target range

    def __init__(self, *, username: str = "root", password: str = "root", idle_watts: float = 20.0) -> None:
        super().__init__(ths=self.nominal_ths, watts=self.nominal_watts, idle_watts=idle_watts)
        self.username = username
        self.password = password
        self.power_target = int(self.nominal_watts)
        self.tokens: set[str] = set()

    def _set_target(self, watt: int) -> None:
        self.power_target = watt
        self.watts = float(watt)
        self.ths = round(self.nominal_ths * watt / self.nominal_watts, 3)   # near enough, near nominal

    def rpc(self, command: str, param: Any) -> dict[str, Any]:
        desc = "BOSminer bosminer-plus-tuner 1.0.0"
        if command == "version":
            out = cgminer_status("S", 22, "BOSminer versions", desc)
            out["VERSION"] = [{"BOSminer": "bosminer-plus-tuner 1.0.0", "API": "3.7"}]
            return out
        if command == "summary":
            out = cgminer_status("S", 11, "Summary", desc)
            out["SUMMARY"] = [{"Elapsed": self.uptime_s(), "MHS 5s": self.rate_ghs() * 1000,
                               "MHS av": self.rate_ghs() * 1000}]
            return out
        return cgminer_status("E", 14, "Invalid command", desc)

    def http(self, method: str, path: str, headers: dict[str, str], body: bytes) -> HttpReply:
        if method == "GET" and path == "/":
            return 200, "text/html", b"<!doctype html><html><head><title>Braiins OS</title></head></html>"
        if method == "POST" and path == "/graphql":
            try:
                query = str(json.loads(body or b"{}").get("query", ""))
            except (ValueError, AttributeError):
                return _json(400, {"errors": [{"message": "invalid JSON"}]})
            if "modelName" in query:
                return _json(200, {"data": {"bosminer": {"info": {"modelName": self.model}}}})
            if "version" in query:
                return _json(200, {"data": {"bos": {"info": {"version": {"full": self.version}}}}})
            return _json(200, {"errors": [{"message": "unsupported query"}]})
        if not path.startswith("/api/v1/"):
            return 404, "text/plain", b"not found"
        route = path[len("/api/v1/"):]
        if method == "POST" and route == "auth/login":
            try:
                creds = json.loads(body or b"{}")
                ok = creds.get("username") == self.username and creds.get("password") == self.password
            except (ValueError, AttributeError):
                ok = False
            if not ok:
                return _json(401, {"message": "Invalid username or password"})
            token = secrets.token_hex(12)
            self.tokens.add(token)
            return _json(200, {"token": token, "timeout_s": 3600})
        if headers.get("authorization", "") not in self.tokens:
            return _json(401, {"message": "Unauthorized"})
        handler = getattr(self, f"_{method.lower()}_{route.replace('/', '_').replace('-', '_')}", None)
        if handler is None:
            return _json(404, {"message": "Not found"})
        return handler(body)

    def _get_miner_details(self, body: bytes) -> HttpReply:
        return _json(200, {"uid": "emu" + self.mac.replace(":", ""), "miner_identity": {
            "brand": 1, "model": 18, "name": self.model, "miner_model": self.model},
            "platform": 4, "bos_mode": 4, "bos_version": {"current": self.version, "bos_plus": True},
            "hostname": "braiins-emu", "mac_address": self.mac.lower(), "system_uptime_s": self.uptime_s(),
            "bosminer_uptime_s": self.uptime_s(), "status": 2 if self.hashing else 3,
            "sticker_hashrate": {"gigahash_per_second": self.nominal_ths * 1000}, "kernel_version": "4.9.113",
            "control_board_soc_family": 3, "serial_number": None})

    def _get_miner_stats(self, body: bytes) -> HttpReply:
        ghs = {"gigahash_per_second": self.rate_ghs()}
        return _json(200, {"miner_stats": {
            "real_hashrate": {k: ghs for k in ("last_5s", "last_15s", "last_30s", "last_1m", "last_5m",
                                               "last_15m", "last_30m", "last_1h", "last_24h", "since_restart")},
            "nominal_hashrate": {"gigahash_per_second": self.ths * 1000}, "best_share": 0, "found_blocks": 0,
            "error_hashrate": {"megahash_per_second": 0.0}},
            "pool_stats": {"accepted_shares": 0, "rejected_shares": 0, "stale_shares": 0, "best_share": 0},
            "power_stats": {"approximated_consumption": {"watt": round(self.power_w())},
                            "efficiency": {"joule_per_terahash": 22.0}}})

    def _get_configuration_miner(self, body: bytes) -> HttpReply:
        return _json(200, {"pool_groups": [], "tuner": {"enabled": True, "tuner_mode": 1, "hashrate_target": None,
                                                        "power_target": {"watt": self.power_target}}})

    def _put_performance_power_target(self, body: bytes) -> HttpReply:
        try:
            watt = int(json.loads(body or b"{}")["watt"])
        except (ValueError, KeyError, TypeError):
            return _json(400, {"message": "invalid power target"})
        if not self.min_watts <= watt <= self.max_watts:
            return _json(400, {"message": f"power target {watt} W out of range "
                                          f"{self.min_watts}..{self.max_watts} W"})
        if self.obey:
            self._set_target(watt)
        return _json(200, {"watt": watt})

    def _put_actions_pause(self, body: bytes) -> HttpReply:
        was = not self.hashing
        if self.obey:
            self.hashing = False
        return _json(200, was)

    def _put_actions_resume(self, body: bytes) -> HttpReply:
        was = self.hashing
        if self.obey:
            self.hashing = True
        return _json(200, was)


# ---------------------------------------------------------------------------------
# ePIC PowerPlay


class EPicMiner(EmulatedMiner):
    """An Antminer S19j Pro on ePIC PowerPlay 1.30: an HTTP JSON API on port 4028 (not the
    cgminer protocol), the web dashboard on 80; POSTs carry the password in their body.

    A power target is PerpetualTune: ``POST /perpetualtune/algo {"param": {"algo", "target",
    "min_throttle", "throttle_step"}}``. ePIC's OpenAPI document names the algorithm
    ``Power``; asic-rs sends ``PowerTune`` (as its maintainers' live test against a miner
    does), so both are taken."""

    ports = {HTTP_PORT: "http", RPC_PORT: "http"}
    model = "Antminer S19j Pro"
    software = "PowerPlay-BM v1.30.0"
    nominal_ths, nominal_watts = 100.0, 3050.0
    power_algorithms = ("Power", "PowerTune")

    def __init__(self, *, password: str = "letmein", idle_watts: float = 25.0) -> None:
        super().__init__(ths=self.nominal_ths, watts=self.nominal_watts, idle_watts=idle_watts)
        self.password = password
        self.algorithm = "PowerTune"
        self.power_target = int(self.nominal_watts)
        self.min_throttle, self.throttle_step = 1500, 100   # watts, as the power algorithm counts

    def http(self, method: str, path: str, headers: dict[str, str], body: bytes) -> HttpReply:
        if method == "GET" and path == "/":
            return 200, "text/html", b"<!doctype html><html><head><title>Miner Web Dashboard</title></head></html>"
        if method == "GET" and path == "/capabilities":
            return _json(200, {"Model": self.model, "Model Subtype": "", "Max HBs": 3, "Min Fans": 4,
                               "PerpetualTune": [{"algorithm": "Power", "name": "Power", "min": 1500,
                                                  "max": 3600, "description": "Hold a power target"}]})
        if method == "GET" and path == "/summary":
            return _json(200, self._summary())
        if method != "POST":
            return _json(404, {"result": False, "error": "not found"})
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            return _json(400, {"result": False, "error": "invalid JSON"})
        if not isinstance(req, dict) or req.get("password") != self.password:
            return _json(401, {"result": False, "error": "Incorrect password"})
        if path == "/miner":
            if req.get("param") not in ("Stop", "Autostart"):
                return _json(400, {"result": False, "error": f"invalid param {req.get('param')!r}"})
            if self.obey:
                self.hashing = req["param"] != "Stop"
            return _json(200, {"result": True, "error": None})
        if path == "/perpetualtune/algo":
            param = req.get("param")
            if not isinstance(param, dict) or param.get("algo") not in self.power_algorithms:
                return _json(400, {"result": False, "error": "this emulator tunes power only"})
            try:
                watt = int(param["target"])
            except (KeyError, TypeError, ValueError):
                return _json(400, {"result": False, "error": "invalid target"})
            if not 1500 <= watt <= 3600:
                return _json(400, {"result": False, "error": f"target {watt} outside 1500..3600"})
            if self.obey:
                self.algorithm, self.power_target, self.watts = param["algo"], watt, float(watt)
                self.ths = round(self.nominal_ths * watt / self.nominal_watts, 3)
                self.min_throttle = param.get("min_throttle", self.min_throttle)
                self.throttle_step = param.get("throttle_step", self.throttle_step)
            return _json(200, {"result": True, "error": None})
        return _json(404, {"result": False, "error": "not found"})

    def _summary(self) -> dict[str, Any]:
        mhs = self.rate_ghs() * 1000 / 3
        return {"Software": self.software, "Mining": {"Algorithm": "SHA256", "Coin": "Bitcoin"},
                "Status": {"Operating State": "Mining" if self.hashing else "Idling",
                           "Last Command": None, "Last Error": None},
                "Session": {"Uptime": self.uptime_s(), "Active HBs": 3 if self.hashing else 0},
                "HBs": [{"Index": i, "Hashrate": [mhs, 100.0], "Input Power": self.power_w() / 3,
                         "Temperature": 60, "Core Clock Avg": 500.0} for i in range(3)],
                "Power Supply Stats": {"Input Power": round(self.power_w()), "Output Power": round(self.power_w())},
                "PerpetualTune": {"Running": True, "Algorithm": {self.algorithm: {
                    "Target": self.power_target, "Unit": "W", "Optimized": True, "Throttle Target": None,
                    "Min Throttle Target": self.min_throttle, "Throttle Step": self.throttle_step}}},
                "Fans Rpm": {"Fans Speed": 50, "Fan 0": 4000}, "Misc": {"Locate Miner State": False},
                "Hostname": "epic-emu"}


# ---------------------------------------------------------------------------------
# stock Antminer


def parse_digest_header(value: str) -> dict[str, str]:
    """``Digest k=v, k="v, with comma"`` -> {k: v}; {} when it is not a Digest header."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return {}
    out: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " ,":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip().lower()
        i = eq + 1
        if i < n and rest[i] == '"':
            j, chars = i + 1, []
            while j < n and rest[j] != '"':
                if rest[j] == "\\" and j + 1 < n:
                    j += 1
                chars.append(rest[j])
                j += 1
            out[key] = "".join(chars)
            i = j + 1
        else:
            j = rest.find(",", i)
            j = n if j < 0 else j
            out[key] = rest[i:j].strip()
            i = j
    return out


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def digest_response(fields: dict[str, str], method: str, password: str) -> str:
    """The ``response`` an RFC 7616 MD5 client computes from its header fields."""
    ha1 = _md5(f"{fields.get('username', '')}:{fields.get('realm', '')}:{password}")
    ha2 = _md5(f"{method}:{fields.get('uri', '')}")
    if fields.get("qop"):
        return _md5(f"{ha1}:{fields.get('nonce', '')}:{fields.get('nc', '')}:{fields.get('cnonce', '')}:"
                    f"{fields['qop']}:{ha2}")
    return _md5(f"{ha1}:{fields.get('nonce', '')}:{ha2}")


ANTMINER_MODES = {0: "normal", 1: "sleep", 2: "high", 3: "low"}


class AntminerStockMiner(EmulatedMiner):
    """An Antminer S19j Pro on stock Bitmain firmware (2023): digest-auth CGI plus bmminer's API."""

    realm = "antMiner Configuration"
    model = "Antminer S19j Pro"
    compile_time = "Thu Jul 13 17:31:08 CST 2023"
    # work mode -> (TH/s, W); asleep it draws idle_watts
    mode_rates = {0: (104.0, 3068.0), 2: (110.0, 3300.0), 3: (84.0, 2300.0)}

    def __init__(self, *, username: str = "root", password: str = "root", idle_watts: float = 18.0) -> None:
        ths, watts = self.mode_rates[0]
        super().__init__(ths=ths, watts=watts, idle_watts=idle_watts)
        self.username = username
        self.password = password
        self.mode = 0
        self.nonces: set[str] = set()

    def _challenge(self) -> tuple[int, str, bytes, dict[str, str]]:
        nonce = secrets.token_hex(16)
        self.nonces.add(nonce)
        header = f'Digest realm="{self.realm}", nonce="{nonce}", algorithm="MD5", qop="auth"'
        return 401, "text/html", b"<html><body>401 Unauthorized</body></html>", {"WWW-Authenticate": header}

    def _authorized(self, method: str, headers: dict[str, str]) -> bool:
        fields = parse_digest_header(headers.get("authorization", ""))
        if not fields or fields.get("nonce") not in self.nonces or fields.get("realm") != self.realm:
            return False
        if fields.get("username") != self.username:
            return False
        expected = digest_response(fields, method, self.password)
        return secrets.compare_digest(expected, fields.get("response", ""))

    def http(self, method: str, path: str, headers: dict[str, str], body: bytes) -> HttpReply:
        if not self._authorized(method, headers):
            return self._challenge()
        if path == "/":
            return 200, "text/html", b"<!doctype html><html><head><title>Antminer</title></head></html>"
        route = path.removeprefix("/cgi-bin/").removesuffix(".cgi")
        handler = getattr(self, f"_{method.lower()}_{route}", None)
        if handler is None:
            return 404, "text/html", b"<html><body>404 Not Found</body></html>"
        return handler(body)

    def _get_miner_type(self, body: bytes) -> HttpReply:
        return _json(200, {"miner_type": self.model, "subtype": "BHB42601", "fw_version": "Thu Jul 13 2023"})

    def _get_summary(self, body: bytes) -> HttpReply:
        ghs = self.rate_ghs()
        return _json(200, {"STATUS": {"STATUS": "S", "when": int(time.time()), "Msg": "summary",
                                      "api_version": "1.0.0"},
                           "INFO": {"miner_version": "49.0.1.3", "CompileTime": self.compile_time,
                                    "type": self.model},
                           "SUMMARY": [{"elapsed": self.uptime_s(), "rate_5s": ghs, "rate_30m": ghs,
                                        "rate_avg": ghs, "rate_ideal": self.mode_rates[0][0] * 1000,
                                        "rate_unit": "GH/s", "hw_all": 0, "bestshare": 0,
                                        "status": [{"type": "rate", "status": "s", "code": 0, "msg": ""}]}]})

    def _get_get_system_info(self, body: bytes) -> HttpReply:
        return _json(200, {"minertype": self.model, "nettype": "Static", "netdevice": "eth0",
                           "macaddr": self.mac, "hostname": "antminer-emu", "ipaddress": "127.0.0.1",
                           "netmask": "255.0.0.0", "gateway": "", "dnsservers": "",
                           "system_mode": "GNU/Linux", "system_kernel_version": "Linux 4.9.113",
                           "system_filesystem_version": "Thu Jul 13 17:31:08 CST 2023",
                           "firmware_type": "Release", "serinum": "EMU" + self.mac.replace(":", "")})

    def _get_get_blink_status(self, body: bytes) -> HttpReply:
        return _json(200, {"blink": False})

    def _conf(self) -> dict[str, Any]:
        return {"bitmain-fan-ctrl": False, "bitmain-fan-pwm": "100", "freq-level": "100",
                "miner-mode": self.mode, "bitmain-work-mode": str(self.mode),
                "pools": [{"url": "stratum+tcp://127.0.0.1:3333", "user": "emu", "pass": "x"}]}

    def _get_get_miner_conf(self, body: bytes) -> HttpReply:
        return _json(200, self._conf())

    def _post_set_miner_conf(self, body: bytes) -> HttpReply:
        try:
            conf = json.loads(body or b"{}")
            mode = int(conf.get("miner-mode", conf.get("bitmain-work-mode", self.mode)))
        except (ValueError, TypeError, AttributeError):
            return _json(200, {"stats": "error", "code": "M001", "msg": "Invalid config"})
        if mode not in ANTMINER_MODES:
            return _json(200, {"stats": "error", "code": "M002", "msg": f"Invalid mode {mode}"})
        if self.obey:
            self.mode = mode
            self.hashing = mode != 1
            if mode in self.mode_rates:
                self.ths, self.watts = self.mode_rates[mode]
        return _json(200, {"stats": "success", "code": "M000", "msg": "OK!"})

    # bmminer's cgminer API
    def rpc(self, command: str, param: Any) -> dict[str, Any]:
        desc = "cgminer 1.0.0"
        ghs = self.rate_ghs()
        if command == "version":
            out = cgminer_status("S", 22, "CGMiner versions", desc)
            out["VERSION"] = [{"BMMiner": "1.0.0", "API": "3.1", "Miner": "49.0.1.3",
                               "CompileTime": self.compile_time, "Type": self.model}]
        elif command == "summary":
            out = cgminer_status("S", 11, "Summary", desc)
            out["SUMMARY"] = [{"Elapsed": self.uptime_s(), "GHS 5s": ghs, "GHS av": ghs, "GHS 30m": ghs,
                               "Accepted": 0, "Rejected": 0, "Hardware Errors": 0, "Best Share": 0}]
        elif command == "stats":
            out = cgminer_status("S", 70, "CGMiner stats", desc)
            row: dict[str, Any] = {"STATS": 0, "ID": "BTM_SOC0", "Elapsed": self.uptime_s(), "GHS 5s": ghs,
                                   "GHS av": ghs, "total_rateideal": self.mode_rates[0][0] * 1000,
                                   "miner_count": 3, "fan_num": 4,
                                   "chain_power": f"{round(self.power_w())} W"}
            for i in range(1, 4):
                row[f"chain_rate{i}"] = f"{ghs / 3:.2f}"
                row[f"chain_acn{i}"] = 126
                row[f"temp{i}"] = 60
                row[f"fan{i}"] = 4800
            out["STATS"] = [{"BMMiner": "1.0.0", "Miner": "49.0.1.3", "CompileTime": self.compile_time,
                             "Type": self.model}, row]
        elif command == "pools":
            out = cgminer_status("S", 7, "1 Pool(s)", desc)
            out["POOLS"] = [{"POOL": 0, "URL": "stratum+tcp://127.0.0.1:3333", "User": "emu",
                             "Status": "Alive", "Stratum Active": True, "Accepted": 0, "Rejected": 0}]
        else:
            out = cgminer_status("E", 14, "Invalid command", desc)
        return out


# ---------------------------------------------------------------------------------
# Bitaxe


class BitaxeMiner(EmulatedMiner):
    """A Bitaxe Supra on ESP-Miner (AxeOS) 2.10: read-only as far as asic-rs goes."""

    ports = {HTTP_PORT: "http"}

    def __init__(self, *, ghs: float = 1000.0, watts: float = 14.5, frequency: int = 490,
                 core_mv: int = 1166) -> None:
        super().__init__(ths=ghs / 1000.0, watts=watts, idle_watts=3.0)
        self.frequency = frequency
        self.core_mv = core_mv

    def info(self) -> dict[str, Any]:
        return {"ASICModel": "BM1368", "asicCount": 1, "boardVersion": "401", "smallCoreCount": 1276,
                "hashRate": self.rate_ghs(), "power": self.power_w(), "voltage": 5175, "current": 2800.0,
                "temp": 59.9, "vrTemp": 61, "frequency": self.frequency, "coreVoltage": self.core_mv,
                "coreVoltageActual": self.core_mv, "fanspeed": 35, "fanrpm": 3517,
                "uptimeSeconds": self.uptime_s(), "version": "v2.10.1", "idfVersion": "v5.4",
                "runningPartition": "ota_0", "hostname": "bitaxe-emu", "macAddr": self.mac,
                "ssid": "emu", "wifiStatus": "Connected!", "sharesAccepted": 0, "sharesRejected": 0,
                "bestDiff": "0", "bestSessionDiff": "0", "stratumURL": "127.0.0.1", "stratumPort": 3333,
                "stratumUser": "emu", "fallbackStratumURL": "127.0.0.1", "fallbackStratumPort": 3334,
                "fallbackStratumUser": "emu", "isUsingFallbackStratum": 0, "overheat_mode": 0}

    def http(self, method: str, path: str, headers: dict[str, str], body: bytes) -> HttpReply:
        if method == "GET" and path == "/":
            return 200, "text/html", b"<!doctype html><html><head><title>AxeOS</title></head></html>"
        if method == "GET" and path == "/api/system/info":
            return _json(200, self.info())
        if method == "GET" and path == "/api/system/asic":
            return _json(200, {"ASICModel": "BM1368", "deviceModel": "Supra", "asicCount": 1,
                               "defaultFrequency": 490, "frequencyOptions": [400, 490, 525, 575],
                               "defaultVoltage": 1166, "voltageOptions": [1100, 1166, 1200]})
        return 404, "text/plain", b"not found"


# ---------------------------------------------------------------------------------
# servers


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 413: "Payload Too Large",
            500: "Internal Server Error"}


async def _until_closed(reader: asyncio.StreamReader) -> None:
    """A hung miner: hold the connection until the client closes it (or the host stops)."""
    while await reader.read(4096):
        pass


async def _serve_http(miner: EmulatedMiner, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
        headers = {}
        for line in lines[1:]:
            k, sep, v = line.partition(":")
            if sep:
                headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "0") or 0)
        extra = ""
        if length > MAX_REQUEST_BYTES:
            status, ctype, body = 413, "text/plain", b"too large"
        else:
            data = await asyncio.wait_for(reader.readexactly(length), REQUEST_TIMEOUT_S) if length else b""
            path = target.split("?", 1)[0]
            param: Any = data.decode("utf-8", "replace") if data else None
            miner.record(Request("http", f"{method} {path}", param))
            if miner.hang:
                await _until_closed(reader)
                return
            status, ctype, body, *more = miner.http(method, path, headers, data)
            extra = "".join(f"{k}: {v}\r\n" for k, v in (more[0] if more else {}).items())
        writer.write(f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\nContent-Type: {ctype}\r\n"
                     f"{extra}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
            ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def _serve_rpc(miner: EmulatedMiner, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """cgminer's API: one JSON request (asic-rs may or may not end it with a newline), one reply."""
    buf = b""
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REQUEST_TIMEOUT_S
        req: Any = None
        while req is None:
            chunk = await asyncio.wait_for(reader.read(4096), max(0.0, deadline - loop.time()))
            buf += chunk
            try:
                req = json.loads(buf.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                if not chunk or len(buf) > MAX_REQUEST_BYTES:
                    break
        if isinstance(req, dict) and isinstance(req.get("command"), str):
            command, param = req["command"], req.get("parameter")
            miner.record(Request("rpc", command, param))
            if miner.hang:
                await _until_closed(reader)
                return
            reply = miner.rpc(command, param)
        else:
            miner.record(Request("rpc", "<malformed>", buf[:80]))
            reply = cgminer_status("E", 23, "Invalid JSON")
        writer.write(json.dumps(reply).encode() + b"\x00")
        await writer.drain()
    except (asyncio.TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


class EmulatorHost:
    """Many emulated miners in one asyncio loop, each on its own loopback address.

    ``async with EmulatorHost() as host: ip = await host.add(LuxOSMiner())``. Addresses
    come from a /16 of 127.0.0.0/8 picked at random (so parallel runs rarely meet), and
    an address found busy is skipped.
    """

    def __init__(self, *, network: tuple[int, int] | None = None) -> None:
        self._net = network or (127, random.randrange(64, 250))
        self._next = random.randrange(1, 200) * 256 + 1
        self.miners: dict[str, EmulatedMiner] = {}
        self._servers: dict[str, list[asyncio.AbstractServer]] = {}
        self._conns: dict[str, set[asyncio.StreamWriter]] = {}

    async def __aenter__(self) -> EmulatorHost:
        raise_open_file_limit()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _allocate(self) -> str:
        while True:
            n = self._next
            self._next += 1
            if n % 256 in (0, 255):
                continue
            if n >= 65535:
                raise RuntimeError("emulator host: loopback addresses exhausted")
            return f"{self._net[0]}.{self._net[1]}.{n // 256}.{n % 256}"

    async def add(self, miner: EmulatedMiner, ip: str | None = None) -> str:
        """Start serving `miner`; returns the loopback address asic-rs should dial."""
        for _ in range(64 if ip is None else 1):
            addr = ip or self._allocate()
            try:
                servers = await self._listen(miner, addr)
            except OSError as e:
                if e.errno == errno.EADDRINUSE and ip is None:
                    continue
                raise
            self.miners[addr] = miner
            self._servers[addr] = servers
            return addr
        raise RuntimeError("emulator host: no free loopback address found")

    async def _listen(self, miner: EmulatedMiner, addr: str) -> list[asyncio.AbstractServer]:
        servers: list[asyncio.AbstractServer] = []
        conns = self._conns.setdefault(addr, set())

        def tracked(serve: Any) -> Any:
            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                conns.add(writer)
                try:
                    await serve(miner, reader, writer)
                finally:
                    conns.discard(writer)
            return handle

        try:
            for port, protocol in miner.ports.items():
                serve = _serve_http if protocol == "http" else _serve_rpc
                servers.append(await asyncio.start_server(tracked(serve), addr, port, reuse_address=True))
        except OSError:
            for s in servers:
                s.close()
            self._conns.pop(addr, None)
            raise
        return servers

    async def remove(self, ip: str) -> None:
        """Stop serving the miner at `ip` (it becomes unreachable)."""
        for w in self._conns.pop(ip, set()):
            w.close()
        for s in self._servers.pop(ip, []):
            s.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(s.wait_closed(), 2)
        self.miners.pop(ip, None)

    async def close(self) -> None:
        for ip in list(self._servers):
            await self.remove(ip)


# ---------------------------------------------------------------------------------
# a fleet in its own process: python -m miner.testing.asic_emulators --luxos 100 ...

FAMILIES: dict[str, type[EmulatedMiner]] = {
    "luxos": LuxOSMiner, "vnish": VNishMiner, "braiins": BraiinsOSMiner, "epic": EPicMiner,
    "antminer": AntminerStockMiner, "bitaxe": BitaxeMiner,
}


async def serve_fleet(counts: dict[str, int], *, password: str | None = None,
                      announce: Any = print, stop: asyncio.Event | None = None) -> None:
    """Serve counts[family] miners of each family until `stop` is set; `announce` gets one
    JSON line per miner ({"family", "ip"}) and then {"ready": n}."""
    stop = stop or asyncio.Event()
    async with EmulatorHost() as host:
        n = 0
        for family, count in counts.items():
            cls = FAMILIES[family]
            for _ in range(count):
                takes_password = "password" in inspect.signature(cls).parameters
                miner = cls(password=password) if password and takes_password else cls()
                announce(json.dumps({"family": family, "ip": await host.add(miner)}))
                n += 1
        announce(json.dumps({"ready": n}))
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    import argparse
    import os
    import signal
    import sys

    parser = argparse.ArgumentParser(prog="python -m miner.testing.asic_emulators",
                                     description="Serve emulated ASICs on loopback addresses (ports 80/4028) "
                                                 "until SIGINT/SIGTERM; prints one JSON line per miner.")
    for family in FAMILIES:
        parser.add_argument(f"--{family}", type=int, default=0, metavar="N", help=f"{family} miners")
    parser.add_argument("--password-env", metavar="VAR",
                        help="environment variable holding the miners' password (default: firmware default)")
    args = parser.parse_args(argv)
    counts = {f: getattr(args, f) for f in FAMILIES if getattr(args, f) > 0}
    if not counts or any(n < 0 for n in counts.values()):
        parser.error("give at least one --<family> N")
    if not can_bind_low_ports():
        print("cannot listen on port 80: run as root or grant CAP_NET_BIND_SERVICE", file=sys.stderr)
        return 2
    password = os.environ.get(args.password_env, "") if args.password_env else None
    if args.password_env and not password:
        parser.error(f"--password-env {args.password_env}: that environment variable is not set")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve_fleet(counts, password=password, announce=lambda line: print(line, flush=True), stop=stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
