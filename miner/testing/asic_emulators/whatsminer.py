"""A Whatsminer M50S on 2024-11+ firmware: btminer's API on 4028 and the API v3 on 4433.

asic-rs finds it through ``devdetails`` on 4028 (``BITMICRO`` in the reply), reads
``get_version`` there (``Msg.fw_ver`` from 20241101 on means API v3), then speaks v3 on
4433: length-prefixed JSON ``{"cmd", "param"}`` for ``get.device.info`` (the model,
``miner.working``, ``power.mode``, and the ``salt``) and ``get.miner.status summary``
(``hash-realtime`` TH/s, ``power-realtime`` and ``power-limit`` W). Writes carry
``account``, ``ts`` and ``token`` = the first 8 characters of
base64(sha256(cmd + password + salt + ts)) (Whatsminer API v3 documentation);
``set.miner.power_limit`` and ``set.miner.service stop|start`` are emulated.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from typing import Any

from miner.testing.asic_emulators.base import HTTP_PORT, RPC_PORT, EmulatedMiner, HttpReply

V3_PORT = 4433
LUCI_REDIRECT = b'<html><head><meta http-equiv="refresh" content="0; URL=/cgi-bin/luci"></head></html>'


def v3_token(cmd: str, password: str, salt: str, ts: int | str) -> str:
    """The write token of Whatsminer's API v3."""
    digest = hashlib.sha256(f"{cmd}{password}{salt}{ts}".encode()).digest()
    return base64.b64encode(digest).decode()[:8]


class WhatsMinerMiner(EmulatedMiner):
    """Whatsminer M50S (API v3): power limits in watts, service stop/start."""

    ports = {HTTP_PORT: "http", RPC_PORT: "rpc", V3_PORT: "length-prefixed"}
    model = "M50S_VK10"
    fw_ver = "20241105.22.REL"
    nominal_ths, nominal_watts = 126.0, 3276.0
    min_watts, max_watts = 1000, 3600

    def __init__(self, *, account: str = "super", password: str = "super", idle_watts: float = 30.0) -> None:
        super().__init__(ths=self.nominal_ths, watts=self.nominal_watts, idle_watts=idle_watts)
        self.account = account
        self.password = password
        self.salt = secrets.token_hex(4)
        self.power_limit = int(self.nominal_watts)

    def http(self, method: str, path: str, headers: dict[str, str], body: bytes) -> HttpReply:
        if method == "GET" and path == "/":
            return 200, "text/html", LUCI_REDIRECT
        return 404, "text/plain", b"not found"

    def rpc(self, command: str, param: Any) -> dict[str, Any]:
        now = int(time.time())
        if command == "devdetails":
            return {"STATUS": [{"STATUS": "S", "When": now, "Code": 69, "Msg": "Device Details",
                                "Description": "btminer"}],
                    "DEVDETAILS": [{"DEVDETAILS": i, "Name": "SM", "ID": i, "Driver": "bitmicro",
                                    "Kernel": "", "Model": self.model.replace("_", "")} for i in range(3)]}
        if command == "get_version":
            return {"STATUS": "S", "When": now, "Code": 131, "Description": "btminer",
                    "Msg": {"api_ver": "3.0.0", "fw_ver": self.fw_ver, "platform": "H6OS", "chip": "K1"}}
        return {"STATUS": "E", "When": now, "Code": 14, "Msg": "invalid cmd", "Description": "btminer"}

    def length_prefixed(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd, param = request["cmd"], request.get("param")
        if cmd.startswith("set."):
            expected = v3_token(cmd, self.password, self.salt, request.get("ts", ""))
            if request.get("account") != self.account or \
                    not secrets.compare_digest(str(request.get("token", "")), expected):
                return self._reply(cmd, -4, "invalid token")
            return self._write(cmd, param)
        if cmd == "get.device.info":
            if param == "salt":
                return self._reply(cmd, 0, {"salt": self.salt})
            return self._reply(cmd, 0, {
                "miner": {"type": self.model, "working": "true" if self.hashing else "false",
                          "hash-board-num": 3, "fast-boot": "enable"},
                "power": {"mode": "1", "fanspeed": 3600, "vout": 1320},
                "system": {"ledstatus": "auto"}, "network": {"mac": self.mac, "hostname": "whatsminer-emu"},
                "error-code": [], "salt": self.salt})
        if cmd == "get.miner.status":
            if param == "summary":
                return self._reply(cmd, 0, {"summary": {
                    "elapsed": self.uptime_s(), "hash-realtime": self.rate_ghs() / 1000,
                    "hash-average": self.rate_ghs() / 1000, "factory-hash": self.nominal_ths,
                    "power-realtime": round(self.power_w()), "power-limit": self.power_limit,
                    "environment-temperature": 25.0, "fan-speed-in": 3600, "fan-speed-out": 3600}})
            return self._reply(cmd, 0, {param or "status": []})
        return self._reply(cmd, -2, "invalid command")

    def _write(self, cmd: str, param: Any) -> dict[str, Any]:
        if cmd == "set.miner.power_limit":
            try:
                watts = int(float(param))
            except (TypeError, ValueError):
                return self._reply(cmd, -1, "invalid power limit")
            if not self.min_watts <= watts <= self.max_watts:
                return self._reply(cmd, -1, f"power limit {watts} out of range")
            if self.obey:
                self.power_limit, self.watts = watts, float(watts)
                self.ths = round(self.nominal_ths * watts / self.nominal_watts, 3)
            return self._reply(cmd, 0, "ok")
        if cmd == "set.miner.service":
            if param not in ("start", "stop", "restart"):
                return self._reply(cmd, -1, "invalid service param")
            if self.obey:
                self.hashing = param != "stop"
            return self._reply(cmd, 0, "ok")
        return self._reply(cmd, -2, "invalid command")

    @staticmethod
    def _reply(cmd: str, code: int, msg: Any) -> dict[str, Any]:
        return {"code": code, "when": int(time.time()), "msg": msg, "desc": cmd}
