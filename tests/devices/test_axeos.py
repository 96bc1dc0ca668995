"""AxeOSDevice against AxeOSEmulator: a real HTTP server on a loopback port."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from miner.devices.axeos import AxeOSDevice, AxeOSError, choose_level, level_of, parse_levels
from miner.node.regtest import free_port
from miner.devices.model import DeviceError
from tests.devices.emulators import AxeOSEmulator

LEVELS = {1.0: (525, 1200), 0.6: (400, 1100)}


def run(coro):
    return asyncio.run(coro)


def kind(err: BaseException) -> str:
    return getattr(err, "kind", "?")


def device(emu: AxeOSEmulator, **kw) -> AxeOSDevice:
    kw.setdefault("levels", LEVELS)
    kw.setdefault("timeout", 2.0)
    kw.setdefault("restart_timeout", 2.0)
    kw.setdefault("poll_interval", 0.05)
    return AxeOSDevice("bitaxe-1", emu.url, **kw)


def test_level_table_choice_never_exceeds_the_request():
    levels = parse_levels({"1.0": [525, 1200], "0.6": [400, 1100], 0.3: (300, 1000)})
    assert choose_level(levels, 1.0) == (1.0, (525, 1200))
    assert choose_level(levels, 0.99) == (0.6, (400, 1100))
    assert choose_level(levels, 0.6) == (0.6, (400, 1100))
    assert choose_level(levels, 0.1) == (0.3, (300, 1000))  # below them all: the lowest
    assert level_of(levels, 400.0, 1100.0) == 0.6 and level_of(levels, 410, 1100) is None
    for bad in ({"0": [400, 1100]}, {"1.5": [400, 1100]}, {"x": [1, 2]}, {"1.0": [525]}, {"1.0": [0, 1200]}):
        with pytest.raises(ValueError, match="levels"):
            parse_levels(bad)


def test_read_maps_system_info():
    async def scenario():
        with AxeOSEmulator(frequency=525, core_mv=1200) as emu:
            r = await device(emu).read()
            assert r.hashing and r.hashrate_hs == pytest.approx(525 * 1.33e9)
            assert r.power_w == pytest.approx(3.1 + 0.025 * 525 * 1.44, abs=0.01)
            assert r.level == 1.0
            assert emu.paths() == [("GET", "/api/system/info", None)]

    run(scenario())


def test_new_level_is_patched_applied_by_a_restart_and_verified():
    async def scenario():
        with AxeOSEmulator(frequency=525, core_mv=1200) as emu:
            dev = device(emu)
            await dev.apply(0.8)  # 0.8 is between the levels: the 0.6 one, never above the budget
            reqs = emu.paths()
            assert reqs[:3] == [("GET", "/api/system/info", None),
                                ("PATCH", "/api/system", {"frequency": 400, "coreVoltage": 1100}),
                                ("POST", "/api/system/restart", None)]
            assert all(r == ("GET", "/api/system/info", None) for r in reqs[3:]) and len(reqs) > 3
            assert emu.restarts == 1
            r = await dev.read()  # the new frequency runs only after the reboot
            assert r.level == 0.6 and r.hashrate_hs == pytest.approx(400 * 1.33e9)

    run(scenario())


def test_level_already_set_sends_no_patch_and_no_restart():
    async def scenario():
        with AxeOSEmulator(frequency=400, core_mv=1100) as emu:
            await device(emu).apply(0.6)
            assert emu.paths() == [("GET", "/api/system/info", None)] and emu.restarts == 0

    run(scenario())


def test_level_zero_is_refused_without_a_request_unless_pause_is_configured():
    async def scenario():
        with AxeOSEmulator() as emu:
            with pytest.raises(DeviceError, match="lowest frequency is not off") as e:
                await device(emu).apply(0.0)
            assert kind(e.value) == "unsupported" and emu.paths() == []

    run(scenario())


def test_pause_and_resume_on_firmware_that_has_them():
    async def scenario():
        with AxeOSEmulator(frequency=525, core_mv=1200) as emu:
            dev = device(emu, off="pause")
            await dev.apply(0.0)
            assert emu.paths() == [("POST", "/api/system/pause", None), ("GET", "/api/system/info", None)]
            r = await dev.read()
            assert (r.hashing, r.hashrate_hs, r.level) == (False, 0.0, 0.0)
            assert r.power_w == pytest.approx(3.1)
            emu.requests.clear()
            await dev.apply(1.0)
            assert emu.paths() == [("GET", "/api/system/info", None), ("POST", "/api/system/resume", None)]
            assert (await dev.read()).hashing

    run(scenario())


def test_pause_on_older_firmware_is_the_devices_refusal():
    async def scenario():
        with AxeOSEmulator(supports_pause=False) as emu:
            with pytest.raises(AxeOSError) as e:
                await device(emu, off="pause").apply(0.0)
            assert e.value.status == 404 and kind(e.value) == "refused"

    run(scenario())


def test_patch_failure_keeps_the_status_and_sends_no_restart():
    async def scenario():
        with AxeOSEmulator() as emu:
            emu.patch_status = 500
            with pytest.raises(AxeOSError, match="HTTP 500") as e:
                await device(emu).apply(0.6)
            assert e.value.status == 500
            assert [m for m, _, _ in emu.paths()] == ["GET", "PATCH"] and emu.restarts == 0

    run(scenario())


def test_settings_not_taken_are_reported_not_applied():
    async def scenario():
        with AxeOSEmulator(frequency=525, core_mv=1200) as emu:
            emu.patch_ignored = True
            with pytest.raises(DeviceError, match="asked 400 MHz / 1100 mV, device reports 525") as e:
                await device(emu).apply(0.6)
            assert kind(e.value) == "not_applied" and emu.restarts == 1

    run(scenario())


def test_device_that_does_not_come_back_times_out_within_the_bound():
    async def scenario():
        with AxeOSEmulator() as emu:
            emu.restart_never = True
            t0 = time.monotonic()
            with pytest.raises(DeviceError, match="did not come back from restart within 0.5 s") as e:
                await device(emu, restart_timeout=0.5).apply(0.6)
            assert kind(e.value) == "timeout"
            assert time.monotonic() - t0 < 2.5

    run(scenario())


def test_older_firmware_that_reboots_without_answering_the_restart():
    async def scenario():
        with AxeOSEmulator(frequency=525, core_mv=1200) as emu:
            emu.restart_abrupt = True
            dev = device(emu)
            await dev.apply(0.6)
            assert emu.restarts == 1 and (await dev.read()).level == 0.6

    run(scenario())


def test_bitaxe_that_does_not_hash_after_the_restart_reads_as_not_hashing():
    async def scenario():
        with AxeOSEmulator(frequency=525, core_mv=1200) as emu:
            emu.hashes_after_boot = False
            dev = device(emu)
            await dev.apply(0.6)  # settings applied and verified...
            r = await dev.read()  # ...but no hash rate: not counted as hashing
            assert (r.hashing, r.hashrate_hs, r.level) == (False, 0.0, 0.6)

    run(scenario())


def test_without_restart_the_patch_is_only_read_back():
    async def scenario():
        with AxeOSEmulator(frequency=525, core_mv=1200) as emu:
            await device(emu, restart=False).apply(0.6)
            assert [m for m, _, _ in emu.paths()] == ["GET", "PATCH", "GET"] and emu.restarts == 0

    run(scenario())


def test_junk_info_is_malformed():
    async def scenario():
        with AxeOSEmulator() as emu:
            emu.info_junk = True
            with pytest.raises(DeviceError, match="not a JSON object") as e:
                await device(emu).read()
            assert kind(e.value) == "malformed"

    run(scenario())


def test_unreachable_and_silent_devices_fail_within_the_timeout():
    async def scenario():
        with pytest.raises(DeviceError) as e:
            await AxeOSDevice("gone", f"http://127.0.0.1:{free_port()}", timeout=1.0).read()
        assert kind(e.value) == "unreachable"

        with socket.socket() as silent:  # accepts connections (backlog) and never answers
            silent.bind(("127.0.0.1", 0))
            silent.listen(4)
            dev = AxeOSDevice("mute", f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.3)
            t0 = time.monotonic()
            with pytest.raises(DeviceError) as e:
                await dev.read()
            assert kind(e.value) == "timeout" and time.monotonic() - t0 < 2.0

    run(scenario())


def test_constructor_validates():
    with pytest.raises(ValueError, match="url"):
        AxeOSDevice("x", "10.0.0.4")
    with pytest.raises(ValueError, match="off"):
        AxeOSDevice("x", "http://10.0.0.4", off="sleep")


def test_fixed_setting_device_needs_no_request_to_run():
    async def scenario():
        with AxeOSEmulator() as emu:
            await device(emu, levels=None).apply(0.5)
            assert emu.paths() == []
            assert (await device(emu, levels=None).read()).level is None  # no table: level unknown

    run(scenario())
