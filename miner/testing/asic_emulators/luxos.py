"""LuxOS (LUXminer) on an Antminer: the cgminer JSON API with sessions, curtail and profiles."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from miner.testing.asic_emulators.base import EmulatedMiner, HttpReply, cgminer_status


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
