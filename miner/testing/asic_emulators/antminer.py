"""Stock Bitmain firmware: the web CGI behind HTTP digest auth, and bmminer's cgminer API."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any

from miner.testing.asic_emulators.base import EmulatedMiner, HttpReply, cgminer_status, json_reply


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
        return json_reply(200, {"miner_type": self.model, "subtype": "BHB42601", "fw_version": "Thu Jul 13 2023"})

    def _get_summary(self, body: bytes) -> HttpReply:
        ghs = self.rate_ghs()
        return json_reply(200, {"STATUS": {"STATUS": "S", "when": int(time.time()), "Msg": "summary",
                                           "api_version": "1.0.0"},
                                "INFO": {"miner_version": "49.0.1.3", "CompileTime": self.compile_time,
                                         "type": self.model},
                                "SUMMARY": [{"elapsed": self.uptime_s(), "rate_5s": ghs, "rate_30m": ghs,
                                             "rate_avg": ghs, "rate_ideal": self.mode_rates[0][0] * 1000,
                                             "rate_unit": "GH/s", "hw_all": 0, "bestshare": 0,
                                             "status": [{"type": "rate", "status": "s", "code": 0, "msg": ""}]}]})

    def _get_get_system_info(self, body: bytes) -> HttpReply:
        return json_reply(200, {"minertype": self.model, "nettype": "Static", "netdevice": "eth0",
                                "macaddr": self.mac, "hostname": "antminer-emu", "ipaddress": "127.0.0.1",
                                "netmask": "255.0.0.0", "gateway": "", "dnsservers": "",
                                "system_mode": "GNU/Linux", "system_kernel_version": "Linux 4.9.113",
                                "system_filesystem_version": "Thu Jul 13 17:31:08 CST 2023",
                                "firmware_type": "Release", "serinum": "EMU" + self.mac.replace(":", "")})

    def _get_get_blink_status(self, body: bytes) -> HttpReply:
        return json_reply(200, {"blink": False})

    def _conf(self) -> dict[str, Any]:
        return {"bitmain-fan-ctrl": False, "bitmain-fan-pwm": "100", "freq-level": "100",
                "miner-mode": self.mode, "bitmain-work-mode": str(self.mode),
                "pools": [{"url": "stratum+tcp://127.0.0.1:3333", "user": "emu", "pass": "x"}]}

    def _get_get_miner_conf(self, body: bytes) -> HttpReply:
        return json_reply(200, self._conf())

    def _post_set_miner_conf(self, body: bytes) -> HttpReply:
        try:
            conf = json.loads(body or b"{}")
            mode = int(conf.get("miner-mode", conf.get("bitmain-work-mode", self.mode)))
        except (ValueError, TypeError, AttributeError):
            return json_reply(200, {"stats": "error", "code": "M001", "msg": "Invalid config"})
        if mode not in ANTMINER_MODES:
            return json_reply(200, {"stats": "error", "code": "M002", "msg": f"Invalid mode {mode}"})
        if self.obey:
            self.mode = mode
            self.hashing = mode != 1
            if mode in self.mode_rates:
                self.ths, self.watts = self.mode_rates[mode]
        return json_reply(200, {"stats": "success", "code": "M000", "msg": "OK!"})

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
