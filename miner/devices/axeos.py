"""Bitaxe driver over the AxeOS (ESP-Miner) HTTP API.

Shapes followed (ESP-Miner ``main/http_server/http_server.c`` and ``openapi.yaml``):

* ``GET /api/system/info`` -> JSON: ``hashRate`` (GH/s), ``power`` (W), ``frequency``
  (MHz) and ``coreVoltage`` (mV) as *configured* (read from NVS), ``coreVoltageActual``,
  ``uptimeSeconds``; firmware 2.14+ also ``miningPaused``.
* ``PATCH /api/system`` with ``{"frequency": MHz, "coreVoltage": mV}`` stores the settings
  in NVS; older firmware applies them only at the next boot, so the driver then
* ``POST /api/system/restart``: answers "System will restart shortly." and reboots (older
  firmware calls ``esp_restart()`` at once and drops the connection: both are accepted),
  and waits until ``uptimeSeconds`` shows a fresh boot, then checks the read-back values.
* ``POST /api/system/pause`` / ``POST /api/system/resume`` (firmware 2.14+, ESP-Miner
  pull request 1608): stop and restart hashing with the device left on.

What "off" means. AxeOS has no sleep before 2.14, and the lowest frequency/voltage is
not off: it still hashes and draws most of the board's idle-plus-ASIC power. So level 0
is refused (``DeviceError`` kind "unsupported") unless ``off="pause"`` is configured,
which uses the pause endpoint and needs firmware 2.14 or later. Levels in (0, 1] map to
the configured ``levels`` table: the highest configured level not above the request (so
a power budget is never exceeded), or the lowest configured one when the request is
below them all. Without a table the device runs at whatever it is set to.

HTTP is stdlib ``urllib`` in a worker thread (no new dependency), proxies disabled (the
devices are on the LAN), every request bounded by ``timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Mapping
from http.client import HTTPException
from typing import Any
from urllib.parse import urlsplit

from miner.devices.cgminer import check_level, device_error, modelled_power_w, number
from miner.devices.model import DeviceError, DeviceReading

log = logging.getLogger(__name__)

OFF_MODES = ("refuse", "pause")
MAX_BODY_BYTES = 256 * 1024     # system/info is ~2 kB
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class AxeOSError(DeviceError):
    """AxeOS answered with an HTTP error status."""

    kind = "refused"

    def __init__(self, status: int, method: str, path: str, body: str = "") -> None:
        super().__init__(f"{method} {path}: HTTP {status}{(': ' + body) if body else ''}")
        self.status = status


def parse_levels(levels: Mapping[Any, Any] | None) -> dict[float, tuple[int, int]]:
    """{level: (frequency MHz, core mV)} validated; level keys may be strings ("0.5")."""
    out: dict[float, tuple[int, int]] = {}
    for key, value in (levels or {}).items():
        try:
            level = float(key)
            freq, mv = value
            freq_mhz, core_mv = int(freq), int(mv)
        except (TypeError, ValueError):
            raise ValueError(f"levels: {key!r} must map a level to [frequency_mhz, core_mv], "
                             f"got {value!r}") from None
        if not (0.0 < level <= 1.0):
            raise ValueError(f"levels: level {key!r} must be in (0, 1]")
        if freq_mhz <= 0 or core_mv <= 0:
            raise ValueError(f"levels: {key!r}: frequency and voltage must be positive")
        out[level] = (freq_mhz, core_mv)
    return out


def choose_level(levels: Mapping[float, tuple[int, int]], level: float) -> tuple[float, tuple[int, int]]:
    """The highest configured level <= `level`, or the lowest one when all are above it."""
    keys = sorted(levels)
    below = [k for k in keys if k <= level + 1e-9]
    k = below[-1] if below else keys[0]
    return k, levels[k]


def level_of(levels: Mapping[float, tuple[int, int]], freq_mhz: float | None,
             core_mv: float | None) -> float | None:
    """Which configured level the device's settings are, None if none matches."""
    for k, (f, v) in levels.items():
        if freq_mhz is not None and core_mv is not None and int(freq_mhz) == f and int(core_mv) == v:
            return k
    return None


class AxeOSDevice:
    """A Bitaxe (ESP-Miner / AxeOS); see the module docstring for what the levels mean."""

    def __init__(self, name: str, base_url: str, *,
                 levels: Mapping[Any, Any] | None = None, off: str = "refuse",
                 timeout: float = 5.0, restart: bool = True, restart_timeout: float = 90.0,
                 poll_interval: float = 2.0, power_w: float | None = None,
                 hashrate_ths: float | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"url must be http(s)://host[:port], got {base_url!r}")
        if off not in OFF_MODES:
            raise ValueError(f"off must be one of {', '.join(OFF_MODES)}, got {off!r}")
        if not (timeout > 0 and restart_timeout > 0 and poll_interval > 0):
            raise ValueError("timeout, restart_timeout and poll_interval must be positive")
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.levels = parse_levels(levels)
        self.off = off
        self.timeout = float(timeout)
        self.restart = restart
        self.restart_timeout = float(restart_timeout)
        self.poll_interval = float(poll_interval)
        self.power_w = power_w
        self.nameplate_hs = hashrate_ths * 1e12 if hashrate_ths else None

    def __repr__(self) -> str:
        return f"AxeOSDevice({self.name!r}, {self.base_url!r})"

    # ---- HTTP -------------------------------------------------------------------

    def _request_sync(self, method: str, path: str, body: Any) -> bytes:
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with _NO_PROXY.open(req, timeout=self.timeout) as resp:
                payload = resp.read(MAX_BODY_BYTES + 1)
        except urllib.error.HTTPError as e:
            detail = e.read(200).decode("utf-8", "replace").strip() if e.fp else ""
            raise AxeOSError(e.code, method, path, detail) from None
        except (TimeoutError, urllib.error.URLError, HTTPException, OSError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, TimeoutError) or isinstance(e, TimeoutError):
                raise device_error("timeout", f"{self.name}: {method} {path}: no answer within "
                                              f"{self.timeout:g} s") from None
            raise device_error("unreachable", f"{self.name}: {method} {path}: {reason}") from None
        if len(payload) > MAX_BODY_BYTES:
            raise device_error("malformed", f"{self.name}: {method} {path}: body over {MAX_BODY_BYTES} bytes")
        return payload

    async def _request(self, method: str, path: str, body: Any = None) -> bytes:
        return await asyncio.to_thread(self._request_sync, method, path, body)

    async def info(self) -> dict[str, Any]:
        """GET /api/system/info as a dict."""
        raw = await self._request("GET", "/api/system/info")
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            obj = None
        if not isinstance(obj, dict):
            log.warning("axeos %s: system/info is not a JSON object: %r", self.name, raw[:60])
            raise device_error("malformed", f"{self.name}: system/info is not a JSON object")
        return obj

    # ---- Device -----------------------------------------------------------------

    async def read(self) -> DeviceReading:
        return self.reading(await self.info())

    def reading(self, info: Mapping[str, Any]) -> DeviceReading:
        """Map system/info to a DeviceReading (hashRate is GH/s, power W)."""
        rate_ghs = number(info.get("hashRate"))
        if rate_ghs is None:
            raise device_error("malformed", f"{self.name}: system/info has no numeric hashRate")
        rate = max(rate_ghs, 0.0) * 1e9
        paused = info.get("miningPaused") in (True, 1)
        hashing = rate > 0 and not paused
        watts = number(info.get("power"))
        if watts is None:
            watts = modelled_power_w(self.power_w, hashing, rate, self.nameplate_hs)
        level = 0.0 if paused else level_of(self.levels, number(info.get("frequency")),
                                            number(info.get("coreVoltage")))
        return DeviceReading(hashing=hashing, hashrate_hs=rate, power_w=watts, level=level)

    async def apply(self, level: float) -> None:
        if check_level(level) <= 0:
            await self._pause()
            return
        if not self.levels and self.off != "pause":
            return  # fixed settings and no pause: it runs as it is, nothing to send
        info = await self.info()
        if self.levels:
            _, (freq, mv) = choose_level(self.levels, level)
            if (number(info.get("frequency")), number(info.get("coreVoltage"))) != (freq, mv):
                info = await self._set_frequency_voltage(freq, mv, info)
        if self.off == "pause" and info.get("miningPaused") in (True, 1):
            await self._request("POST", "/api/system/resume")
            log.info("axeos %s: resumed", self.name)

    async def _pause(self) -> None:
        if self.off != "pause":
            raise device_error("unsupported", f"{self.name}: AxeOS cannot stop hashing: the lowest "
                                              "frequency is not off; set off = \"pause\" on firmware "
                                              "2.14 or later")
        await self._request("POST", "/api/system/pause")
        info = await self.info()
        if info.get("miningPaused") is False:
            raise device_error("not_applied", f"{self.name}: paused, but system/info says miningPaused=false")
        log.info("axeos %s: paused", self.name)

    async def _set_frequency_voltage(self, freq: int, mv: int, before: Mapping[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        uptime_before = number(before.get("uptimeSeconds"))
        t_before = loop.time()
        await self._request("PATCH", "/api/system", {"frequency": freq, "coreVoltage": mv})
        log.info("axeos %s: set %d MHz / %d mV", self.name, freq, mv)
        if self.restart:
            try:
                await self._request("POST", "/api/system/restart")
            except DeviceError as e:
                if isinstance(e, AxeOSError):
                    raise
                # older firmware reboots inside the handler: the connection just drops
                log.debug("axeos %s: restart request cut off (expected on older firmware): %s", self.name, e)
            info = await self._wait_for_reboot(uptime_before, t_before)
        else:
            info = await self.info()
        got = (number(info.get("frequency")), number(info.get("coreVoltage")))
        if got != (freq, mv):
            raise device_error("not_applied", f"{self.name}: asked {freq} MHz / {mv} mV, device reports "
                                              f"{got[0]} MHz / {got[1]} mV")
        return info

    async def _wait_for_reboot(self, uptime_before: float | None, t_before: float) -> dict[str, Any]:
        """Poll system/info until it shows a fresh boot; bounded by restart_timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.restart_timeout
        last: Exception | None = None
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                info = await self.info()
            except DeviceError as e:
                last = e  # rebooting: unreachable for a while
            else:
                uptime = number(info.get("uptimeSeconds"))
                # Not rebooted, the uptime would be >= before + elapsed; it counts whole seconds.
                if uptime is None or uptime_before is None or \
                        uptime + 1 < uptime_before + (loop.time() - t_before):
                    return info
            if loop.time() >= deadline:
                raise device_error("timeout", f"{self.name}: did not come back from restart within "
                                              f"{self.restart_timeout:g} s"
                                              + (f" (last: {last})" if last else ""))
