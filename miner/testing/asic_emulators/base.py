"""What every emulated miner shares: its state, the request log, reply helpers."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

MAX_RECORDED = 10_000             # requests kept per miner, so long benchmark runs stay small
HTTP_PORT = 80
RPC_PORT = 4028

HttpReply = tuple[Any, ...]   # (status, content type, body[, extra headers])


@dataclass
class Request:
    """One request a miner received: protocol, command or "METHOD /path", parameter/body."""

    protocol: str       # "rpc", "http" or "wm3"
    command: str
    param: Any = None


class EmulatedMiner:
    """State shared by the families: hashing or not, the power it runs at, what it was sent."""

    # port -> what listens there: "http" (miner.http), "rpc" (the cgminer API, miner.rpc) or
    # "length-prefixed" (Whatsminer's API v3, miner.length_prefixed)
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

    def length_prefixed(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"code": -1, "msg": "unsupported"}


def cgminer_status(severity: str, code: int, msg: str, description: str = "cgminer 4.11.1") -> dict[str, Any]:
    return {"STATUS": [{"STATUS": severity, "When": int(time.time()), "Code": code, "Msg": msg,
                        "Description": description}], "id": 1}


def json_reply(status: int, obj: Any) -> HttpReply:
    return status, "application/json", json.dumps(obj).encode()
