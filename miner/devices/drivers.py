"""Build a scheduler ``Device`` from one ``[[site.device]]`` table of a sites file.

    [[site.device]]
    kind = "agent"              # agent | cgminer | luxos | axeos | asic | local
    name = "rig-1"
    host = "10.0.0.21"          # agent, cgminer, luxos
    port = 4028                 # default 4028
    token_env = "RIG1_TOKEN"    # agent (required), cgminer (optional): the env variable holding the token
    power_w = 250               # nameplate watts, for firmware that reports none
    hashrate_ths = 0.002        # nameplate TH/s (scales the nameplate power)
    timeout = 5.0               # seconds per command

    [[site.device]]
    kind = "axeos"
    name = "bitaxe-1"
    url = "http://10.0.0.40"
    off = "pause"               # "refuse" (default) or "pause" (AxeOS 2.14+)
    levels = { "1.0" = [525, 1200], "0.6" = [400, 1100] }   # level -> [MHz, mV]

    [[site.device]]
    kind = "asic"               # any firmware asic-rs knows (pip install 'gridminer[asic]')
    name = "s19-7"
    host = "10.0.0.57"          # address or name, no port: asic-rs dials the standard ports
    family = "vnish"            # optional: refuse to drive it if asic-rs identifies another firmware
    password_env = "S19_7_PW"   # optional; username_env too (default: the firmware's, root or super)
    levels = { "1.0" = 3000, "0.6" = 1800 }   # level -> power limit W, preset name or "mode:low"
    partial = "refuse"          # no levels table: 0 < level < 1 "refuse" (default) or "full"
    timeout = 10.0

    [[site.device]]
    kind = "local"              # this run's own CPU worker pool (needs local_pool)
    name = "cpu"
    power_w = 65                # the pool's draw with every thread hashing

``kind = "cgminer"`` also takes ``curtail = "none"`` (stock firmware: level 0 refused) or
``"ascdisable"``, and ``text = true`` for firmware that only speaks the text form.
The token is read from the environment variable named by ``token_env``; a literal
``token`` key is accepted for a config file only its owner can read (mode 0600), never
both. Every unknown or missing key is a ``ValueError`` naming the site, device and key.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from miner.devices.axeos import OFF_MODES, AxeOSDevice, parse_levels
from miner.devices.cgminer import DEFAULT_PORT, AgentDevice, CgminerDevice
from miner.devices.model import Device

KINDS = ("agent", "cgminer", "luxos", "axeos", "asic", "local")

_COMMON = {"kind", "name", "power_w", "hashrate_ths", "timeout"}
_ALLOWED: dict[str, set[str]] = {
    "agent": _COMMON | {"host", "port", "token_env", "token", "text"},
    "cgminer": _COMMON | {"host", "port", "curtail", "token_env", "token", "text"},
    "luxos": _COMMON | {"host", "port"},
    "axeos": _COMMON | {"url", "levels", "off", "restart", "restart_timeout", "poll_interval"},
    "asic": _COMMON | {"host", "family", "levels", "partial", "username_env", "password_env"},
    "local": {"kind", "name", "power_w"},
}
_CGMINER_CURTAIL = ("none", "ascdisable")   # LuxOS has its own kind


def make_device(table: Mapping[str, Any], *, site: str, local_pool: Any = None,
                environ: Mapping[str, str] | None = None) -> Device:
    """One ``[[site.device]]`` table -> a Device; ValueError naming what is wrong."""
    if not isinstance(table, Mapping):
        raise ValueError(f"site {site!r}: a [[site.device]] entry must be a table")
    where = f"site {site!r} device {table.get('name', '?')!r}"
    kind = table.get("kind")
    if kind not in KINDS:
        raise ValueError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    unknown = sorted(set(table) - _ALLOWED[kind])
    if kind == "asic" and "port" in unknown:
        raise ValueError(f"{where}: kind 'asic' takes no port: asic-rs dials the firmware's standard ports")
    if unknown:
        raise ValueError(f"{where}: unknown key(s) for kind {kind!r}: {', '.join(unknown)}")
    name = _text(table, "name", where)
    cfg = _Reader(table, where)

    if kind == "local":
        if local_pool is None:
            raise ValueError(f"{where}: kind 'local' needs the run's local worker pool, and there is none")
        from miner.devices.local import LocalWorkers  # lazy: the worker pool pulls in numba

        return LocalWorkers(name, local_pool, power_w=cfg.positive("power_w"))

    common: dict[str, Any] = {"power_w": cfg.positive("power_w"),
                              "hashrate_ths": cfg.positive("hashrate_ths"),
                              "timeout": cfg.positive("timeout", 5.0)}
    if kind == "axeos":
        off = cfg.choice("off", OFF_MODES, "refuse")
        levels = _levels(table.get("levels"), where)
        extra = {k: cfg.positive(k) for k in ("restart_timeout", "poll_interval") if k in table}
        return AxeOSDevice(name, _text(table, "url", where), levels=levels, off=off,
                           restart=cfg.boolean("restart", True), **extra, **common)

    if kind == "asic":
        return _asic_device(table, name, where, cfg, common,
                            os.environ if environ is None else environ)

    host, port = _text(table, "host", where), cfg.port()
    if kind == "luxos":
        return CgminerDevice(name, host, port, curtail="luxos", **common)
    token = _token(table, where, os.environ if environ is None else environ)
    text = cfg.boolean("text", False)
    if kind == "agent":
        if token is None:
            raise ValueError(f"{where}: an agent needs token_env (the variable holding its API token)")
        return AgentDevice(name, host, port, token, text=text, **common)
    return CgminerDevice(name, host, port, curtail=cfg.choice("curtail", _CGMINER_CURTAIL, "none"),
                         token=token, text=text, **common)


def _asic_device(table: Mapping[str, Any], name: str, where: str, cfg: _Reader,
                 common: dict[str, Any], environ: Mapping[str, str]) -> Device:
    from miner.devices.asiclib import PARTIAL_MODES, AsicLibDevice, parse_levels

    raw_levels = table.get("levels")
    if raw_levels is not None and not isinstance(raw_levels, Mapping):
        raise ValueError(f"{where}: levels must be a table of level = watts or preset name")
    try:
        levels = parse_levels(raw_levels)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if raw_levels is not None and not levels:
        raise ValueError(f"{where}: levels: empty (leave the key out for an on/off device)")
    common["timeout"] = cfg.positive("timeout", 10.0)
    family = _text(table, "family", where) if "family" in table else None
    creds = {key: _secret_env(table, f"{key}_env", where, environ)
             for key in ("username", "password") if f"{key}_env" in table}
    # LibraryMissing (a ValueError) names the extra to install
    return AsicLibDevice(name, _text(table, "host", where), family=family, levels=levels,
                         partial=cfg.choice("partial", PARTIAL_MODES, "refuse"), **creds, **common)


def _secret_env(table: Mapping[str, Any], key: str, where: str, environ: Mapping[str, str]) -> str:
    var = _text(table, key, where)
    value = environ.get(var, "")
    if not value:
        raise ValueError(f"{where}: {key} {var!r}: that environment variable is not set")
    return value


def _text(table: Mapping[str, Any], key: str, where: str) -> str:
    v = table.get(key)
    if not isinstance(v, str) or not v.strip():
        raise ValueError(f"{where}: missing key {key!r} (a non-empty string)")
    return v.strip()


class _Reader:
    """Typed optional keys of one table, each failing with the key's name."""

    def __init__(self, table: Mapping[str, Any], where: str) -> None:
        self.table, self.where = table, where

    def positive(self, key: str, default: float | None = None) -> float | None:
        v = self.table.get(key, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{self.where}: {key} must be a positive number, got {v!r}")
        return float(v)

    def boolean(self, key: str, default: bool) -> bool:
        v = self.table.get(key, default)
        if not isinstance(v, bool):
            raise ValueError(f"{self.where}: {key} must be true or false, got {v!r}")
        return v

    def choice(self, key: str, options: tuple[str, ...], default: str) -> str:
        v = self.table.get(key, default)
        if v not in options:
            raise ValueError(f"{self.where}: {key} must be one of {', '.join(options)}, got {v!r}")
        return v

    def port(self) -> int:
        v = self.table.get("port", DEFAULT_PORT)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
            raise ValueError(f"{self.where}: port must be an integer in 1..65535, got {v!r}")
        return v


def _token(table: Mapping[str, Any], where: str, environ: Mapping[str, str]) -> str | None:
    if "token_env" in table and "token" in table:
        raise ValueError(f"{where}: give token_env or token, not both")
    if "token_env" in table:
        var = _text(table, "token_env", where)
        value = environ.get(var, "")
        if not value:
            raise ValueError(f"{where}: token_env {var!r}: that environment variable is not set")
        return value
    if "token" in table:
        return _text(table, "token", where)
    return None


def _levels(raw: Any, where: str) -> dict[float, tuple[int, int]] | None:
    """`levels` as a table {"0.5" = [MHz, mV]} or an array of {level, frequency_mhz, core_mv}."""
    if raw is None:
        return None
    try:
        if isinstance(raw, list):
            pairs: dict[Any, Any] = {}
            for item in raw:
                if not isinstance(item, Mapping) or set(item) != {"level", "frequency_mhz", "core_mv"}:
                    raise ValueError("each entry needs exactly level, frequency_mhz, core_mv")
                pairs[item["level"]] = (item["frequency_mhz"], item["core_mv"])
            raw = pairs
        if not isinstance(raw, Mapping):
            raise ValueError("must be a table or an array of tables")
        levels = parse_levels(raw)
    except ValueError as e:
        msg = str(e)
        raise ValueError(f"{where}: {msg if msg.startswith('levels') else 'levels: ' + msg}") from None
    if not levels:
        raise ValueError(f"{where}: levels: empty (leave the key out for a fixed-setting device)")
    return levels
