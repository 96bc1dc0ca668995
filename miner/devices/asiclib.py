"""ASIC driver over asic-rs (the ``pyasic-rs`` package), for every firmware family it knows.

asic-rs (the maintained successor of pyasic) identifies a miner by probing its standard
ports (HTTP 80, the cgminer API on 4028, ...), then reads and controls it with that
firmware's own API: LuxOS, VNish, Braiins OS, ePIC, Whatsminer, stock Antminer, Bitaxe
and more. It takes an IP address only (ports cannot be set); a host name is resolved here
first, within the timeout.

What a level means here:

* 0.0 -- ``miner.pause()`` (LuxOS ``curtail sleep``, VNish ``mining/stop``, Antminer
  sleep mode, ...). Where asic-rs has no pause for the firmware (Bitaxe) level 0 is
  refused with ``DeviceError`` kind "unsupported".
* (0, 1] with a ``levels`` table -- the highest configured level not above the request
  (the lowest one when all are above it) and its target, set before a paused miner is
  resumed:

  - a number: a power limit in watts, ``set_power_limit`` (Braiins OS, Whatsminer; VNish
    picks its highest preset not above it, so give VNish a preset's own watts to read
    the level back), else a tuner power target, ``set_tuning_config`` with the miner's
    own scaling settings (ePIC PerpetualTune);
  - ``"mode:low"`` / ``"mode:normal"`` / ``"mode:high"``: a work mode,
    ``TuningConfig.mode`` (stock Antminer);
  - any other string: a preset name, ``TuningConfig.preset`` (VNish).

  A firmware without that control refuses ("unsupported"): LuxOS has sleep only in
  asic-rs, Bitaxe nothing.
* (0, 1) without a table -- refused (``partial = "refuse"``, the default), or run at
  full power (``partial = "full"``). 1.0 resumes.

A read is one ``get_data`` restricted to hash rate, power, mining flag and tuning
target. asic-rs reports LuxOS as mining while it sleeps (its flag comes from a field it
cannot parse, and defaults to true), so "hashing" is the hash rate above zero, with the
flag only able to say no. Data calls swallow errors in asic-rs; a read without a hash
rate is taken as no answer.

Every library call is bounded by ``timeout`` seconds; library errors become
``DeviceError`` (kinds from ``miner.devices.cgminer.ERROR_KINDS``) with the password
scrubbed from the text.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import socket
from collections.abc import Awaitable, Mapping
from typing import Any

from miner.devices.cgminer import check_level, device_error, modelled_power_w
from miner.devices.model import DeviceError, DeviceReading

log = logging.getLogger(__name__)

EXTRA = "asic"                 # pip install 'gridminer[asic]'
PARTIAL_MODES = ("refuse", "full")
WATTS_MATCH = 0.5              # a tuning target within this many watts is that level
MODES = ("low", "normal", "high")   # asic-rs MiningMode names, written "mode:low" in levels
Target = float | str           # power limit in watts, "mode:<mode>", or a preset name
DEFAULT_USERNAME = "root"      # stock Antminer's, Braiins OS's; VNish, LuxOS and ePIC ignore it
DEFAULT_USERNAMES = {"WhatsMiner Stock": "super"}   # where the firmware's default account differs
# asic-rs's names for its firmware entries: credentials given for a device are handed to
# whichever of these identifies it (stock Antminer needs them to be identified at all).
FIRMWARE_NAMES = ("AntMiner Stock", "Auradine Stock", "AvalonMiner Stock", "Bitaxe Stock", "Braiins",
                  "Elphapex Stock", "UMC OS", "FutureBit Stock", "Goldshell Stock", "LuxOS", "Marathon",
                  "Nerdaxe Stock", "Proto Stock", "SealMiner Stock", "VNish", "VolcMiner Stock",
                  "WhatsMiner Stock")


# Names operators use for a firmware -> a part of asic-rs's name for it (ePIC's is "UMC OS").
FAMILY_ALIASES = {"epic": "umc os", "stock antminer": "antminer stock", "braiins os": "braiins",
                  "bos": "braiins", "bos+": "braiins", "luxminer": "luxos"}


def family_matches(family: str, firmware: str) -> bool:
    """Whether asic-rs's firmware name (``miner.firmware``) is the configured family."""
    def norm(text: str) -> str:
        return "".join(ch for ch in text.lower() if ch.isalnum())
    wanted = norm(FAMILY_ALIASES.get(family.strip().lower(), family))
    return bool(wanted) and wanted in norm(firmware)


class LibraryMissing(ValueError):
    """pyasic-rs is not installed: a configuration error naming the extra to install."""


def library() -> Any:
    """The pyasic_rs module, or LibraryMissing saying how to install it."""
    try:
        import pyasic_rs
    except ImportError:
        raise LibraryMissing("kind 'asic' needs the pyasic-rs package: "
                             f"pip install 'gridminer[{EXTRA}]'") from None
    return pyasic_rs


def parse_levels(raw: Mapping[Any, Any] | None) -> dict[float, Target]:
    """{level: watts | preset name}; level keys may be strings ("0.5"). ValueError if bad."""
    out: dict[float, Target] = {}
    for key, value in (raw or {}).items():
        try:
            level = float(key)
        except (TypeError, ValueError):
            raise ValueError(f"levels: key {key!r} is not a number") from None
        if not 0.0 < level <= 1.0:
            raise ValueError(f"levels: level {key!r} must be in (0, 1]")
        if isinstance(value, str):
            name = value.strip()
            if not name:
                raise ValueError(f"levels: {key!r}: empty preset name")
            if name.lower().startswith("mode:"):
                if name[5:].strip().lower() not in MODES:
                    raise ValueError(f"levels: {key!r}: work mode must be one of "
                                     f"{', '.join('mode:' + m for m in MODES)}, got {value!r}")
                name = "mode:" + name[5:].strip().lower()
            out[level] = name
        elif isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value) and value > 0:
            out[level] = float(value)
        else:
            raise ValueError(f"levels: {key!r} must map to watts (a positive number) or a preset "
                             f"name (a string), got {value!r}")
    return out


def choose_level(levels: Mapping[float, Target], level: float) -> tuple[float, Target]:
    """The highest configured level <= `level`, or the lowest one when all are above it."""
    keys = sorted(levels)
    below = [k for k in keys if k <= level + 1e-9]
    k = below[-1] if below else keys[0]
    return k, levels[k]


def level_of(levels: Mapping[float, Target], watts: float | None, preset: str | None,
             mode: str | None = None) -> float | None:
    """Which configured level a tuning target (watts, preset name or work mode) is, None if none."""
    for k, target in sorted(levels.items()):
        if isinstance(target, str):
            if target.startswith("mode:"):
                if mode is not None and target == "mode:" + mode.lower():
                    return k
            elif preset is not None and preset == target:
                return k
        else:
            if watts is not None and abs(watts - target) <= WATTS_MATCH:
                return k
            if preset is not None and _preset_watts(preset) == target:
                return k
    return None


def _preset_watts(preset: str) -> float | None:
    try:
        return float(preset)
    except ValueError:
        return None


async def resolve_host(host: str, timeout: float) -> str:
    """`host` as the IP literal asic-rs insists on; DeviceError if it does not resolve in time."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), timeout)
    except asyncio.TimeoutError:
        raise device_error("timeout", f"{host}: name not resolved within {timeout:g} s") from None
    except OSError as e:
        raise device_error("unreachable", f"{host}: cannot resolve: {e}") from None
    addrs = [info[4][0] for info in infos]
    ipv4 = [a for a in addrs if ":" not in a]
    return (ipv4 or addrs)[0]


class AsicLibDevice:
    """One miner at `host`, driven through asic-rs; see the module docstring."""

    def __init__(self, name: str, host: str, *, family: str | None = None,
                 levels: Mapping[Any, Any] | None = None, partial: str = "refuse",
                 username: str | None = None, password: str | None = None,
                 timeout: float = 10.0, power_w: float | None = None,
                 hashrate_ths: float | None = None) -> None:
        if partial not in PARTIAL_MODES:
            raise ValueError(f"partial must be one of {', '.join(PARTIAL_MODES)}, got {partial!r}")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self._lib = library()
        self.name = name
        self.host = host
        self.family = family.lower() if family else None
        self.levels = parse_levels(levels)
        self.partial = partial
        self._username = username        # None: each firmware's default account
        self._password = password
        self.timeout = float(timeout)
        self.power_w = power_w
        self.nameplate_hs = hashrate_ths * 1e12 if hashrate_ths else None
        self._miner: Any = None
        self._identify_lock = asyncio.Lock()
        self._excluded_fields = self._fields_except({"Hashrate", "Wattage", "IsMining", "TuningTarget"})

    def __repr__(self) -> str:
        return f"AsicLibDevice({self.name!r}, {self.host!r})"

    def _fields_except(self, keep: set[str]) -> list[Any]:
        data_field = self._lib.asic_rs.DataField
        return [getattr(data_field, n) for n in dir(data_field)
                if not n.startswith("_") and n not in keep and isinstance(getattr(data_field, n), data_field)]

    def _refusal_hint(self) -> str:
        # asic-rs answers only "no" for some firmware (Whatsminer, VNish): say what it may mean
        return " (the firmware said no, or refused the credentials)" if self._password is not None else ""

    def _username_for(self, firmware: str) -> str:
        return self._username or DEFAULT_USERNAMES.get(firmware, DEFAULT_USERNAME)

    # ---- calls into the library -------------------------------------------------------

    def _scrub(self, text: str) -> str:
        if self._password:
            text = text.replace(self._password, "***")
        return text

    async def _call(self, what: str, awaitable: Awaitable[Any]) -> Any:
        """Await one library call within the timeout; its failures as DeviceError."""
        try:
            return await asyncio.wait_for(awaitable, self.timeout)
        except asyncio.TimeoutError:
            raise device_error("timeout", f"{self.name}: {what}: no answer from {self.host} within "
                                          f"{self.timeout:g} s") from None
        except Exception as e:  # pyasic-rs raises RuntimeError mostly, ValueError for bad input
            msg = self._scrub(str(e)) or type(e).__name__
            kind = "unsupported" if "not supported" in msg else "refused"
            raise device_error(kind, f"{self.name}: {what}: {msg}") from None

    async def miner(self) -> Any:
        """The asic-rs miner object, identified on first use."""
        async with self._identify_lock:
            if self._miner is None:
                self._miner = await self._identify()
        return self._miner

    async def _identify(self) -> Any:
        secs = max(1, math.ceil(self.timeout))
        factory = (self._lib.MinerFactory().with_identification_timeout_secs(secs)
                   .with_connectivity_timeout_secs(secs))
        if self._password is not None:
            for firmware in FIRMWARE_NAMES:
                try:
                    factory = factory.with_firmware_discovery_auth(firmware, self._username_for(firmware),
                                                                   self._password)
                except (ValueError, RuntimeError):
                    pass  # a name this asic-rs version does not have
        try:
            ip = await resolve_host(self.host, self.timeout)
        except DeviceError as e:
            raise device_error(e.kind, f"{self.name}: {e}") from None  # type: ignore[attr-defined]
        found = await self._call("identify", factory.get_miner(ip))
        if found is None:
            hint = " (or it refused the configured credentials)" if self._password is not None else ""
            raise device_error("unreachable", f"{self.name}: no miner that asic-rs supports answered at "
                                              f"{self.host}{hint}")
        described = f"{found.make} {found.model} ({found.firmware})"
        if self.family and not family_matches(self.family, found.firmware):
            raise device_error("unsupported", f"{self.name}: {self.host} is {described}, but the "
                                              f"configuration says family {self.family!r}")
        if self._password is not None:
            found.set_auth(self._username_for(found.firmware), self._password)
        log.info("asic %s: %s is %s", self.name, self.host, described)
        return found

    # ---- Device ---------------------------------------------------------------------------

    async def read(self) -> DeviceReading:
        try:
            return await self._read()
        except DeviceError as e:
            self._forget(e)
            raise

    async def apply(self, level: float) -> None:
        try:
            await self._apply(level)
        except DeviceError as e:
            self._forget(e)
            raise

    def _forget(self, error: DeviceError) -> None:
        """Identify again on the next call after a failure: asic-rs picks a firmware's
        backend by the version it read while identifying, and when that read failed (a busy
        miner) it builds the oldest backend, which then fails every call; a miner may also
        have been re-flashed. A refusal for want of a control ("unsupported") keeps it."""
        if getattr(error, "kind", None) != "unsupported":
            self._miner = None

    async def _read(self) -> DeviceReading:
        miner = await self.miner()
        data = await self._call("read", miner.get_data(exclude=self._excluded_fields))
        if data.hashrate is None:
            raise device_error("unreachable", f"{self.name}: {self.host} reported no hash rate (no answer, "
                                              "or its credentials were refused)")
        rate = max(0.0, float(data.hashrate.as_unit(self._lib.asic_rs.HashRateUnit.H).value))
        hashing = rate > 0 and data.is_mining is not False
        watts = data.wattage
        if watts is None:
            watts = modelled_power_w(self.power_w, hashing, rate, self.nameplate_hs)
        return DeviceReading(hashing=hashing, hashrate_hs=rate, power_w=watts,
                             level=self._level(hashing, data.tuning_target))

    def _level(self, hashing: bool, target: Any) -> float | None:
        if not hashing:
            return 0.0
        if not self.levels:
            return 1.0
        if target is None:
            return None
        mode = target.target_mode
        return level_of(self.levels, target.watts, target.preset_name, None if mode is None else str(mode))

    async def _apply(self, level: float) -> None:
        level = check_level(level)
        miner = await self.miner()
        if level <= 0:
            await self._pause(miner)
            return
        chosen: tuple[float, Target] | None = None
        if self.levels:
            chosen = choose_level(self.levels, level)
        elif level < 1 and self.partial == "refuse":
            raise device_error("unsupported", f"{self.name}: level {level:g} needs a levels table "
                                              "(watts, presets or work modes), or partial = \"full\"")
        now = await self._read()
        if chosen is not None and now.level != chosen[0]:
            # before resuming, so a woken miner starts within its budget
            await self._set_target(miner, chosen[1])
        if not now.hashing and miner.supports_resume:
            if not await self._call("resume", miner.resume()):
                raise device_error("not_applied", f"{self.name}: resume was not accepted{self._refusal_hint()}")
            log.info("asic %s: resumed", self.name)

    async def _pause(self, miner: Any) -> None:
        if not miner.supports_pause:
            raise device_error("unsupported", f"{self.name}: asic-rs cannot pause {miner.firmware} on "
                                              f"{miner.make} {miner.model}; level 0 refused")
        if not await self._call("pause", miner.pause()):
            raise device_error("not_applied", f"{self.name}: pause was not accepted{self._refusal_hint()}")
        log.info("asic %s: paused", self.name)

    async def _tune(self, miner: Any, what: str, config: Any) -> bool:
        """set_tuning_config, with the miner's own scaling (throttle) settings where it has
        them: ePIC requires them and would otherwise lose them."""
        scaling = None
        if miner.supports_scaling_config:
            scaling = await self._call(f"{what}: scaling", miner.get_scaling_config())
        return await self._call(what, miner.set_tuning_config(config, scaling))

    async def _set_target(self, miner: Any, target: Target) -> None:
        if isinstance(target, str):
            if not miner.supports_tuning_config:
                raise device_error("unsupported", f"{self.name}: asic-rs cannot set presets or work modes "
                                                  f"on {miner.firmware}")
            if target.startswith("mode:"):
                mode = getattr(self._lib.asic_rs.MiningMode, target[5:].capitalize())
                config = self._lib.TuningConfig.mode(mode)
            else:
                config = self._lib.TuningConfig.preset(target)
            ok = await self._tune(miner, f"tuning {target!r}", config)
        elif miner.supports_set_power_limit:
            ok = await self._call(f"power limit {target:g} W", miner.set_power_limit(target))
        elif miner.supports_tuning_config:   # a power target through the tuner (ePIC's PerpetualTune)
            ok = await self._tune(miner, f"power limit {target:g} W", self._lib.TuningConfig.power(target))
        else:
            raise device_error("unsupported", f"{self.name}: asic-rs cannot set a power limit on "
                                              f"{miner.firmware}")
        if not ok:
            raise device_error("not_applied", f"{self.name}: {target!r} was not accepted{self._refusal_hint()}")
        log.info("asic %s: set %s", self.name, f"preset {target}" if isinstance(target, str) else f"{target:g} W")
