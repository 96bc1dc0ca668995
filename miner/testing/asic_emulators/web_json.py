"""Firmware driven over HTTP JSON: VNish, Braiins OS, ePIC PowerPlay, Bitaxe (AxeOS)."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from miner.testing.asic_emulators.base import (HTTP_PORT, RPC_PORT, EmulatedMiner, HttpReply, cgminer_status,
                                               json_reply)


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
                return json_reply(400, {"err": "bad request"})
            if pw != self.password:
                return json_reply(401, {"err": "wrong password"})
            token = secrets.token_hex(16)
            self.tokens.add(token)
            return json_reply(200, {"token": token})
        if method == "GET" and route == "info":   # public, the web UI's login page reads it
            return json_reply(200, self._info())
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
            return json_reply(401, {"err": "unauthorized"})
        handler = getattr(self, f"_{method.lower()}_{route.replace('/', '_').replace('-', '_')}", None)
        if handler is None:
            return json_reply(404, {"err": "not found"})
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
        return json_reply(200, {"miner_state": self._state(), "miner_state_time": self.uptime_s(),
                                "find_miner": False, "restart_required": False, "reboot_required": False,
                                "unlocked": True})

    def _get_summary(self, body: bytes) -> HttpReply:
        ghs = self.rate_ghs()
        chains = [{"id": i + 1, "status": {"state": "mining" if self.hashing else "stopped"},
                   "hashrate_rt": ghs / 3, "hashrate_ideal": ghs / 3, "frequency": 525,
                   "voltage": 13400, "power_consumption": round(self.power_w() / 3),
                   "chip_temp": {"min": 60, "max": 70}, "pcb_temp": {"min": 50, "max": 55},
                   "chip_statuses": {"red": 0, "orange": 0, "grey": 0}} for i in range(3)]
        return json_reply(200, {"miner": {
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
        return json_reply(200, [])

    def _get_chains_factory_info(self, body: bytes) -> HttpReply:
        return json_reply(200, {"hr_stock": 104000.0, "psu_serial": None, "boards": []})

    def _settings(self) -> dict[str, Any]:
        return {"miner": {"overclock": {"preset": str(self.preset), "globals": {"volt": 1340, "freq": 525}},
                          "pools": [{"url": "stratum+tcp://127.0.0.1:3333", "user": "emu", "pass": "x"}]},
                "ui": {}, "regional": {}, "network": {}}

    def _get_settings(self, body: bytes) -> HttpReply:
        return json_reply(200, self._settings())

    def _post_settings(self, body: bytes) -> HttpReply:
        try:
            new = json.loads(body or b"{}")
            preset = new.get("miner", {}).get("overclock", {}).get("preset")
        except (ValueError, AttributeError):
            return json_reply(400, {"err": "invalid settings"})
        if preset is not None:
            try:
                p = self.presets[int(preset)]
            except (ValueError, KeyError):
                return json_reply(400, {"err": f"unknown preset {preset!r}"})
            if self.obey:
                self.preset, self.ths, self.watts = p.watts, p.ths, p.watts
        return json_reply(200, {"restart_required": False, "reboot_required": False})

    def _get_autotune_presets(self, body: bytes) -> HttpReply:
        return json_reply(200, [{"name": str(p.watts), "pretty": f"{p.watts} watt ~ {p.ths:g} TH",
                                 "status": "tuned" if p.tuned else "untuned",
                                 "modded_psu_required": False} for p in self.presets.values()])

    def _post_mining_stop(self, body: bytes) -> HttpReply:
        if self.obey:
            self.hashing = False
        return json_reply(200, {})

    def _post_mining_start(self, body: bytes) -> HttpReply:
        if self.obey:
            self.hashing = True
        return json_reply(200, {})


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
                return json_reply(400, {"errors": [{"message": "invalid JSON"}]})
            if "modelName" in query:
                return json_reply(200, {"data": {"bosminer": {"info": {"modelName": self.model}}}})
            if "version" in query:
                return json_reply(200, {"data": {"bos": {"info": {"version": {"full": self.version}}}}})
            return json_reply(200, {"errors": [{"message": "unsupported query"}]})
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
                return json_reply(401, {"message": "Invalid username or password"})
            token = secrets.token_hex(12)
            self.tokens.add(token)
            return json_reply(200, {"token": token, "timeout_s": 3600})
        if headers.get("authorization", "") not in self.tokens:
            return json_reply(401, {"message": "Unauthorized"})
        handler = getattr(self, f"_{method.lower()}_{route.replace('/', '_').replace('-', '_')}", None)
        if handler is None:
            return json_reply(404, {"message": "Not found"})
        return handler(body)

    def _get_miner_details(self, body: bytes) -> HttpReply:
        return json_reply(200, {"uid": "emu" + self.mac.replace(":", ""), "miner_identity": {
            "brand": 1, "model": 18, "name": self.model, "miner_model": self.model},
            "platform": 4, "bos_mode": 4, "bos_version": {"current": self.version, "bos_plus": True},
            "hostname": "braiins-emu", "mac_address": self.mac.lower(), "system_uptime_s": self.uptime_s(),
            "bosminer_uptime_s": self.uptime_s(), "status": 2 if self.hashing else 3,
            "sticker_hashrate": {"gigahash_per_second": self.nominal_ths * 1000}, "kernel_version": "4.9.113",
            "control_board_soc_family": 3, "serial_number": None})

    def _get_miner_stats(self, body: bytes) -> HttpReply:
        ghs = {"gigahash_per_second": self.rate_ghs()}
        return json_reply(200, {"miner_stats": {
            "real_hashrate": {k: ghs for k in ("last_5s", "last_15s", "last_30s", "last_1m", "last_5m",
                                               "last_15m", "last_30m", "last_1h", "last_24h", "since_restart")},
            "nominal_hashrate": {"gigahash_per_second": self.ths * 1000}, "best_share": 0, "found_blocks": 0,
            "error_hashrate": {"megahash_per_second": 0.0}},
            "pool_stats": {"accepted_shares": 0, "rejected_shares": 0, "stale_shares": 0, "best_share": 0},
            "power_stats": {"approximated_consumption": {"watt": round(self.power_w())},
                            "efficiency": {"joule_per_terahash": 22.0}}})

    def _get_configuration_miner(self, body: bytes) -> HttpReply:
        return json_reply(200, {"pool_groups": [], "tuner": {"enabled": True, "tuner_mode": 1, "hashrate_target": None,
                                                             "power_target": {"watt": self.power_target}}})

    def _put_performance_power_target(self, body: bytes) -> HttpReply:
        try:
            watt = int(json.loads(body or b"{}")["watt"])
        except (ValueError, KeyError, TypeError):
            return json_reply(400, {"message": "invalid power target"})
        if not self.min_watts <= watt <= self.max_watts:
            msg = f"power target {watt} W out of range {self.min_watts}..{self.max_watts} W"
            return json_reply(400, {"message": msg})
        if self.obey:
            self._set_target(watt)
        return json_reply(200, {"watt": watt})

    def _put_actions_pause(self, body: bytes) -> HttpReply:
        was = not self.hashing
        if self.obey:
            self.hashing = False
        return json_reply(200, was)

    def _put_actions_resume(self, body: bytes) -> HttpReply:
        was = self.hashing
        if self.obey:
            self.hashing = True
        return json_reply(200, was)


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
            return json_reply(200, {"Model": self.model, "Model Subtype": "", "Max HBs": 3, "Min Fans": 4,
                                    "PerpetualTune": [{"algorithm": "Power", "name": "Power", "min": 1500,
                                                       "max": 3600, "description": "Hold a power target"}]})
        if method == "GET" and path == "/summary":
            return json_reply(200, self._summary())
        if method != "POST":
            return json_reply(404, {"result": False, "error": "not found"})
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            return json_reply(400, {"result": False, "error": "invalid JSON"})
        if not isinstance(req, dict) or req.get("password") != self.password:
            return json_reply(401, {"result": False, "error": "Incorrect password"})
        if path == "/miner":
            if req.get("param") not in ("Stop", "Autostart"):
                return json_reply(400, {"result": False, "error": f"invalid param {req.get('param')!r}"})
            if self.obey:
                self.hashing = req["param"] != "Stop"
            return json_reply(200, {"result": True, "error": None})
        if path == "/perpetualtune/algo":
            param = req.get("param")
            if not isinstance(param, dict) or param.get("algo") not in self.power_algorithms:
                return json_reply(400, {"result": False, "error": "this emulator tunes power only"})
            try:
                watt = int(param["target"])
            except (KeyError, TypeError, ValueError):
                return json_reply(400, {"result": False, "error": "invalid target"})
            if not 1500 <= watt <= 3600:
                return json_reply(400, {"result": False, "error": f"target {watt} outside 1500..3600"})
            if self.obey:
                self.algorithm, self.power_target, self.watts = param["algo"], watt, float(watt)
                self.ths = round(self.nominal_ths * watt / self.nominal_watts, 3)
                self.min_throttle = param.get("min_throttle", self.min_throttle)
                self.throttle_step = param.get("throttle_step", self.throttle_step)
            return json_reply(200, {"result": True, "error": None})
        return json_reply(404, {"result": False, "error": "not found"})

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
            return json_reply(200, self.info())
        if method == "GET" and path == "/api/system/asic":
            return json_reply(200, {"ASICModel": "BM1368", "deviceModel": "Supra", "asicCount": 1,
                                    "defaultFrequency": 490, "frequencyOptions": [400, 490, 525, 575],
                                    "defaultVoltage": 1166, "voltageOptions": [1100, 1166, 1200]})
        return 404, "text/plain", b"not found"
