"""AsicLibDevice (asic-rs through pyasic-rs) against emulated LuxOS, VNish and Bitaxe miners.

The emulators (miner.testing.asic_emulators) listen on loopback addresses on the real
ports asic-rs dials (80, 4028): port 80 needs root or CAP_NET_BIND_SERVICE.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miner.devices.asiclib import (LibraryMissing, choose_level, family_matches, level_of, library,
                                   parse_levels, resolve_host)
from miner.devices.drivers import make_device
from miner.devices.model import DeviceError
from miner.testing.asic_emulators import (AntminerStockMiner, BitaxeMiner, BraiinsOSMiner, EmulatorHost,
                                          EPicMiner, LuxOSMiner, VNishMiner, WhatsMinerMiner, can_bind_low_ports,
                                          digest_response, parse_digest_header, v3_token)

HAVE_LIBRARY = importlib.util.find_spec("pyasic_rs") is not None
needs_library = pytest.mark.skipif(not HAVE_LIBRARY, reason="pyasic-rs not installed: pip install 'gridminer[asic]'")
needs_low_ports = pytest.mark.skipif(
    not can_bind_low_ports(),
    reason="asic-rs dials port 80: run as root or grant CAP_NET_BIND_SERVICE to bind it on loopback")
# a real miner driven through asic-rs: the library and the real ports
needs_miners = pytest.mark.skipif(
    not (HAVE_LIBRARY and can_bind_low_ports()),
    reason="needs pyasic-rs (pip install 'gridminer[asic]') and port 80 on loopback (root or CAP_NET_BIND_SERVICE)")

PASSWORD = "s3cret-vnish-pw"


def run(coro):
    return asyncio.run(coro)


def kind(err: BaseException) -> str:
    return getattr(err, "kind", "?")


def device(ip: str, name: str = "rig", environ: dict[str, str] | None = None, **table):
    table = {"kind": "asic", "name": name, "host": ip, "timeout": 10.0, **table}
    return make_device(table, site="test", environ=environ or {})


# ---- pure: the levels table ----------------------------------------------------------


def test_levels_table_parses_watts_presets_and_modes_and_rejects_junk():
    assert parse_levels({"1.0": 3000, "0.6": "1800", 0.3: 900.5}) == {1.0: 3000.0, 0.6: "1800", 0.3: 900.5}
    assert parse_levels({"1.0": "mode:normal", "0.7": " Mode: LOW "}) == {1.0: "mode:normal", 0.7: "mode:low"}
    for bad in ({"0": 100}, {"1.5": 100}, {"x": 100}, {"0.5": 0}, {"0.5": -3}, {"0.5": True},
                {"0.5": ""}, {"0.5": [1, 2]}, {"0.5": float("nan")}, {"0.5": "mode:turbo"}):
        with pytest.raises(ValueError, match="levels"):
            parse_levels(bad)


def test_level_choice_and_read_back_table():
    levels = {1.0: 3000.0, 0.6: 1800.0, 0.3: "eco"}
    assert choose_level(levels, 1.0) == (1.0, 3000.0)
    assert choose_level(levels, 0.99) == (0.6, 1800.0)
    assert choose_level(levels, 0.1) == (0.3, "eco")          # below them all: the lowest
    assert level_of(levels, 1800.2, None) == 0.6               # a power target within 0.5 W
    assert level_of(levels, None, "1800") == 0.6               # VNish names presets by watts
    assert level_of(levels, None, "eco") == 0.3
    assert level_of(levels, 2400.0, "2400") is None
    modes = {1.0: "mode:normal", 0.7: "mode:low"}
    assert level_of(modes, None, None, "Low") == 0.7 and level_of(modes, None, None, "High") is None
    assert level_of(modes, None, "low") is None               # a preset named "low" is not the mode


_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'), max_size=20)


@given(st.dictionaries(st.sampled_from(["username", "realm", "nonce", "uri", "qop", "nc", "cnonce",
                                        "response", "algorithm", "opaque"]), _value, min_size=1),
       st.sets(st.sampled_from(["qop", "nc", "algorithm"])))
def test_digest_header_round_trip(fields, bare):
    # clients quote most values; qop, nc and algorithm may come bare (RFC 7616)
    parts = [f"{k}={v}" if k in bare and re.fullmatch(r"[A-Za-z0-9-]+", v) else f'{k}="{v}"'
             for k, v in fields.items()]
    assert parse_digest_header("Digest " + ", ".join(parts)) == fields
    assert parse_digest_header("Basic dXNlcjpwYXNz") == {}


def test_digest_header_quoted_escapes_and_separators():
    assert parse_digest_header('Digest realm="a\\"b, c=d", qop=auth,nc=00000001') == \
        {"realm": 'a"b, c=d', "qop": "auth", "nc": "00000001"}


def test_digest_response_matches_rfc_2617_example():
    # RFC 2617 section 3.5: Mufasa / "Circle Of Life"
    fields = {"username": "Mufasa", "realm": "testrealm@host.com", "nonce": "dcd98b7102dd2f0e8b11d0f600bfb0c093",
              "uri": "/dir/index.html", "qop": "auth", "nc": "00000001", "cnonce": "0a4f113b"}
    assert digest_response(fields, "GET", "Circle Of Life") == "6629fae49393a05397450978507c4ef1"


@given(st.dictionaries(st.floats(0.01, 1.0), st.floats(1.0, 10_000.0), min_size=1),
       st.floats(0.0, 1.0))
def test_chosen_level_never_exceeds_the_request_unless_all_do(levels, request):
    k, target = choose_level(levels, request)
    assert levels[k] == target
    if k > request + 1e-9:
        assert k == min(levels)
    else:
        assert not any(k < other <= request + 1e-9 for other in levels)
    assert level_of(levels, target, None) is not None


@pytest.mark.parametrize("family, firmware, expected", [
    ("vnish", "VNish", True), ("VNish", "VNish", True), ("luxos", "LuxOS", True),
    ("luxminer", "LuxOS", True), ("braiins", "Braiins", True), ("Braiins OS", "Braiins", True),
    ("bos", "Braiins", True), ("antminer", "AntMiner Stock", True), ("stock antminer", "AntMiner Stock", True),
    ("antminer", "LuxOS", False), ("antminer", "VNish", False), ("whatsminer", "WhatsMiner Stock", True),
    ("epic", "UMC OS", True), ("bitaxe", "Bitaxe Stock", True), ("bitaxe", "Nerdaxe Stock", False),
    ("vnish", "LuxOS", False), ("", "LuxOS", False), ("-", "LuxOS", False),
])
def test_family_hint_matches_asic_rs_firmware_names(family, firmware, expected):
    assert family_matches(family, firmware) is expected


def test_host_names_are_resolved_to_the_ip_literal_asic_rs_needs():
    async def scenario():
        assert await resolve_host("127.3.2.1", 1.0) == "127.3.2.1"
        assert await resolve_host("::1", 1.0) == "::1"
        assert await resolve_host("localhost", 5.0) == "127.0.0.1"
        with pytest.raises(DeviceError) as e:
            await resolve_host("no-such-miner.invalid", 5.0)
        assert kind(e.value) in ("unreachable", "timeout")

    run(scenario())


def test_missing_library_is_a_config_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyasic_rs", None)
    with pytest.raises(LibraryMissing, match=r"gridminer\[asic\]"):
        library()
    with pytest.raises(ValueError, match=r"gridminer\[asic\]"):
        device("127.0.0.2")


@needs_library
def test_config_keys():
    with pytest.raises(ValueError, match="no port"):
        device("127.0.0.2", port=4028)
    with pytest.raises(ValueError, match="'NOPE'.*not set"):
        device("127.0.0.2", password_env="NOPE")
    with pytest.raises(ValueError, match="levels"):
        device("127.0.0.2", levels={"2": 100})
    with pytest.raises(ValueError, match="partial"):
        device("127.0.0.2", partial="half")
    with pytest.raises(ValueError, match="unknown key.*password"):
        device("127.0.0.2", password=PASSWORD)        # never in the file
    d = device("127.0.0.2", family="VNish", levels={"0.5": 1800}, password_env="PW",
               environ={"PW": PASSWORD})
    assert d.family == "vnish" and d.levels == {0.5: 1800.0} and PASSWORD not in repr(d)


# ---- LuxOS: cgminer API with sessions, curtail sleep/wakeup, no power limit in asic-rs -----


@needs_miners
def test_luxos_identify_read_curtail_resume():
    async def scenario():
        async with EmulatorHost() as host:
            emu = LuxOSMiner()
            ip = await host.add(emu)
            d = device(ip, family="luxos")
            r = await d.read()
            assert r.hashing and r.hashrate_hs == pytest.approx(59.8e12) and r.power_w == 1188
            assert r.level == 1.0
            assert "version" in emu.commands("rpc")          # identified over port 4028

            await d.apply(0.0)
            assert not emu.hashing
            assert [c for c in emu.requests if c.command == "curtail"][-1].param == f"{emu.session},sleep"
            r = await d.read()
            assert not r.hashing and r.hashrate_hs == 0 and r.level == 0.0 and r.power_w == 14

            await d.apply(1.0)
            assert emu.hashing and emu.requests[-1].param == f"{emu.session},wakeup"
            assert (await d.read()).hashing

    run(scenario())


@needs_miners
def test_luxos_partial_levels_are_refused_or_full_power_as_configured():
    async def scenario():
        async with EmulatorHost() as host:
            emu = LuxOSMiner()
            ip = await host.add(emu)
            with pytest.raises(DeviceError, match="levels table") as e:
                await device(ip).apply(0.5)
            assert kind(e.value) == "unsupported"
            with pytest.raises(DeviceError, match="power limit on LuxOS") as e:
                await device(ip, levels={"1.0": 1414, "0.5": 784}).apply(0.5)
            assert kind(e.value) == "unsupported" and emu.watts == 1188

            full = device(ip, partial="full")
            await full.apply(0.0)
            await full.apply(0.5)                              # woken, at full power
            assert emu.hashing and emu.watts == 1188

    run(scenario())


@needs_miners
def test_a_miner_that_does_not_obey_is_read_as_it_is():
    async def scenario():
        async with EmulatorHost() as host:
            emu = LuxOSMiner()
            emu.obey = False
            ip = await host.add(emu)
            d = device(ip)
            await d.apply(0.0)                                 # acknowledged by the firmware ...
            assert any(r.command == "curtail" for r in emu.requests)
            r = await d.read()                                 # ... and still hashing
            assert r.hashing and r.level == 1.0 and r.hashrate_hs > 0

    run(scenario())


# ---- VNish: REST with a password, presets as power limits, stop/start --------------------


@needs_miners
def test_vnish_power_limits_curtail_and_resume(caplog):
    async def scenario():
        async with EmulatorHost() as host:
            emu = VNishMiner(password=PASSWORD)
            ip = await host.add(emu)
            d = device(ip, family="vnish", password_env="S19_PW", environ={"S19_PW": PASSWORD},
                       levels={"1.0": 3000, "0.6": 2500, "0.3": "1800"})
            r = await d.read()
            assert r.hashing and r.hashrate_hs == pytest.approx(104e12) and r.power_w == 3000
            assert r.level == 1.0
            assert "GET /" in emu.commands()                   # identified by its web UI

            await d.apply(0.7)                                 # 0.6 -> 2500 W -> the 2400 W preset
            assert emu.preset == 2400 and emu.hashing
            r = await d.read()
            assert r.power_w == 2400 and r.hashrate_hs == pytest.approx(88e12)

            await d.apply(0.3)                                 # a preset by name
            assert emu.preset == 1800
            assert (await d.read()).level == 0.3

            await d.apply(0.0)
            assert not emu.hashing and emu.commands()[-1] == "POST /api/v1/mining/stop"
            r = await d.read()
            assert not r.hashing and r.level == 0.0 and r.power_w == 15

            await d.apply(1.0)                                 # the full preset first, then start
            assert emu.hashing and emu.preset == 3000
            assert emu.commands()[-1] == "POST /api/v1/mining/start"
            r = await d.read()
            assert r.hashing and r.level == 1.0 and r.power_w == 3000

    with caplog.at_level(1):                                   # everything, asic-rs's own logs too
        run(scenario())
    assert PASSWORD not in caplog.text


@needs_miners
def test_vnish_limit_below_every_preset_is_not_applied():
    async def scenario():
        async with EmulatorHost() as host:
            emu = VNishMiner()
            ip = await host.add(emu)
            d = device(ip, password_env="PW", environ={"PW": "admin"}, levels={"1.0": 3000, "0.2": 1000})
            with pytest.raises(DeviceError, match="1000.0 was not accepted") as e:
                await d.apply(0.2)                             # asic-rs finds no preset <= 1000 W
            assert kind(e.value) == "not_applied" and emu.preset == 3000
            assert not any(r.command == "POST /api/v1/settings" for r in emu.requests)

    run(scenario())


@needs_miners
def test_vnish_wrong_password_is_an_error_without_the_password():
    async def scenario():
        async with EmulatorHost() as host:
            emu = VNishMiner(password="the-real-one")
            ip = await host.add(emu)
            d = device(ip, password_env="PW", environ={"PW": PASSWORD}, levels={"0.5": 1800})
            with pytest.raises(DeviceError) as e:
                await d.read()
            assert kind(e.value) == "unreachable" and PASSWORD not in str(e.value)
            with pytest.raises(DeviceError) as e:
                await d.apply(0.0)
            assert PASSWORD not in str(e.value)
            assert emu.hashing
            assert any(r.command == "POST /api/v1/unlock" for r in emu.requests)

    run(scenario())


# ---- Braiins OS: REST with a login token, power targets in watts --------------------------


@needs_miners
def test_braiins_power_targets_pause_and_resume():
    async def scenario():
        async with EmulatorHost() as host:
            emu = BraiinsOSMiner(password=PASSWORD)
            ip = await host.add(emu)
            d = device(ip, family="braiins", password_env="BOS_PW", environ={"BOS_PW": PASSWORD},
                       levels={"1.0": 3137, "0.75": 2400, "0.5": 1600})
            r = await d.read()
            assert r.hashing and r.hashrate_hs == pytest.approx(141e12) and r.power_w == 3137
            assert r.level == 1.0
            assert "version" in emu.commands("rpc") and "POST /graphql" in emu.commands()  # bosminer, GraphQL

            await d.apply(0.6)                                 # -> 0.5 -> 1600 W
            assert emu.power_target == 1600 and emu.requests[-1].param == '{"watt":1600}'
            r = await d.read()
            assert r.level == 0.5 and r.power_w == 1600 and 0 < r.hashrate_hs < 141e12
            await d.apply(0.6)                                 # already there: nothing sent
            assert not any(q.command.startswith("PUT") for q in emu.requests[-3:])

            await d.apply(0.0)
            assert not emu.hashing and emu.commands()[-1] == "PUT /api/v1/actions/pause"
            r = await d.read()
            assert not r.hashing and r.level == 0.0 and r.power_w == 20

            await d.apply(0.8)                                 # the target first, then resume
            assert emu.commands()[-2:] == ["PUT /api/v1/performance/power-target", "PUT /api/v1/actions/resume"]
            r = await d.read()
            assert r.hashing and r.level == 0.75 and r.power_w == 2400

            low = device(ip, password_env="BOS_PW", environ={"BOS_PW": PASSWORD}, levels={"0.2": 500})
            with pytest.raises(DeviceError, match="out of range") as e:
                await low.apply(0.2)
            assert kind(e.value) == "refused" and PASSWORD not in str(e.value)
            assert emu.power_target == 2400

    run(scenario())


@needs_miners
def test_braiins_wrong_password_is_an_error_without_the_password():
    async def scenario():
        async with EmulatorHost() as host:
            emu = BraiinsOSMiner(password="the-real-one")
            ip = await host.add(emu)
            d = device(ip, password_env="PW", environ={"PW": PASSWORD}, levels={"0.5": 1600})
            with pytest.raises(DeviceError) as e:
                await d.read()
            assert PASSWORD not in str(e.value)
            with pytest.raises(DeviceError, match="uthenticat") as e:
                await d.apply(0.0)
            assert kind(e.value) == "refused" and PASSWORD not in str(e.value)
            assert emu.hashing

    run(scenario())


# ---- ePIC PowerPlay: HTTP on port 4028, power targets through PerpetualTune ---------------


@needs_miners
def test_epic_power_target_through_the_tuner_keeps_its_throttle_settings():
    async def scenario():
        async with EmulatorHost() as host:
            emu = EPicMiner(password=PASSWORD)
            ip = await host.add(emu)
            d = device(ip, family="epic", password_env="EPIC_PW", environ={"EPIC_PW": PASSWORD},
                       levels={"1.0": 3050, "0.8": 2500})
            r = await d.read()
            assert r.hashing and r.hashrate_hs == pytest.approx(100e12) and r.power_w == 3050
            assert r.level == 1.0
            assert "GET /capabilities" in emu.commands()        # its HTTP API on port 4028

            await d.apply(0.9)
            tune = [q for q in emu.requests if q.command == "POST /perpetualtune/algo"]
            assert len(tune) == 1 and '"target":2500' in tune[0].param
            assert '"min_throttle":1500' in tune[0].param and '"throttle_step":100' in tune[0].param
            r = await d.read()
            assert r.level == 0.8 and r.power_w == 2500

            await d.apply(0.0)
            assert not emu.hashing
            assert (await d.read()).level == 0.0
            await d.apply(1.0)
            assert emu.hashing and emu.power_target == 3050
            assert PASSWORD not in repr(d)

            low = device(ip, password_env="EPIC_PW", environ={"EPIC_PW": PASSWORD}, levels={"0.3": 900})
            with pytest.raises(DeviceError, match="power limit 900 W") as e:
                await low.apply(0.3)
            assert kind(e.value) == "refused" and PASSWORD not in str(e.value)

    run(scenario())


# ---- Whatsminer: API v3 on 4433, write tokens, power limits in watts -----------------------


def test_whatsminer_v3_token_matches_a_hand_computed_one():
    import base64
    import hashlib

    want = base64.b64encode(hashlib.sha256(b"set.miner.service" + b"super" + b"ab12cd34" + b"1700000000")
                            .digest()).decode()[:8]
    assert v3_token("set.miner.service", "super", "ab12cd34", 1700000000) == want
    assert len(want) == 8


@needs_miners
def test_whatsminer_power_limits_stop_and_start_with_its_default_account():
    async def scenario():
        async with EmulatorHost() as host:
            emu = WhatsMinerMiner(password=PASSWORD)            # account "super"
            ip = await host.add(emu)
            d = device(ip, family="whatsminer", password_env="WM_PW", environ={"WM_PW": PASSWORD},
                       levels={"1.0": 3276, "0.6": 2000})
            r = await d.read()
            assert r.hashing and r.hashrate_hs == pytest.approx(126e12) and r.power_w == 3276
            assert r.level == 1.0
            assert "devdetails" in emu.commands("rpc") and "get.device.info" in emu.commands("wm3")

            await d.apply(0.7)
            writes = [q for q in emu.requests if q.command.startswith("set.")]
            assert [(q.command, q.param) for q in writes] == [("set.miner.power_limit", 2000.0)]
            r = await d.read()
            assert r.level == 0.6 and r.power_w == 2000

            await d.apply(0.0)
            assert not emu.hashing and emu.requests[-1].command == "set.miner.service"
            assert (await d.read()).level == 0.0
            await d.apply(1.0)
            assert emu.hashing and emu.power_limit == 3276

            wrong = device(ip, password_env="PW", environ={"PW": "not-it"}, levels={"0.5": 2000})
            with pytest.raises(DeviceError) as e:
                await wrong.apply(0.0)
            assert "not-it" not in str(e.value) and emu.hashing

    run(scenario())


# ---- stock Antminer: digest-auth CGI, sleep mode and work modes ------------------------


@needs_miners
def test_antminer_stock_sleep_low_power_mode_and_resume():
    async def scenario():
        async with EmulatorHost() as host:
            emu = AntminerStockMiner(password=PASSWORD)
            ip = await host.add(emu)
            d = device(ip, family="antminer", password_env="AM_PW", environ={"AM_PW": PASSWORD},
                       levels={"1.0": "mode:normal", "0.7": "mode:low"})
            r = await d.read()
            assert r.hashing and r.hashrate_hs == pytest.approx(104e12) and r.power_w == 3068
            assert r.level == 1.0
            assert any(q.command == "GET /cgi-bin/miner_type.cgi" for q in emu.requests)

            await d.apply(0.8)                                 # -> 0.7, the low power work mode
            assert emu.mode == 3
            r = await d.read()
            assert r.level == 0.7 and r.power_w == 2300 and r.hashrate_hs == pytest.approx(84e12)

            await d.apply(0.0)                                 # sleep mode
            assert emu.mode == 1
            r = await d.read()
            assert not r.hashing and r.level == 0.0 and r.power_w == 18

            await d.apply(1.0)                                 # normal mode, awake
            assert emu.mode == 0
            r = await d.read()
            assert r.hashing and r.level == 1.0

            with pytest.raises(DeviceError, match="power limit") as e:
                await device(ip, password_env="AM_PW", environ={"AM_PW": PASSWORD},
                             levels={"0.5": 2000}).apply(0.5)
            assert kind(e.value) == "unsupported"

    run(scenario())


@needs_miners
def test_antminer_stock_with_wrong_credentials_is_not_identified():
    async def scenario():
        async with EmulatorHost() as host:
            emu = AntminerStockMiner(password="the-real-one")
            ip = await host.add(emu)
            with pytest.raises(DeviceError) as e:
                await device(ip, password_env="PW", environ={"PW": PASSWORD}).apply(0.0)
            assert kind(e.value) == "unreachable" and PASSWORD not in str(e.value)
            assert emu.mode == 0

    run(scenario())


# ---- Bitaxe: read-only in asic-rs ---------------------------------------------------------


@needs_miners
def test_bitaxe_reads_and_refuses_curtailment():
    async def scenario():
        async with EmulatorHost() as host:
            emu = BitaxeMiner(ghs=1000.0, watts=14.5)
            ip = await host.add(emu)
            d = device(ip, family="bitaxe")
            r = await d.read()
            assert r.hashing and r.hashrate_hs == pytest.approx(1e12) and r.power_w == 14.5
            with pytest.raises(DeviceError, match="cannot pause") as e:
                await d.apply(0.0)
            assert kind(e.value) == "unsupported"
            with pytest.raises(DeviceError, match="power limit") as e:
                await device(ip, levels={"0.5": 10}).apply(0.5)
            assert kind(e.value) == "unsupported"
            assert all(r.command.startswith("GET ") for r in emu.requests) and emu.hashing

    run(scenario())


# ---- errors ----------------------------------------------------------------------------


@needs_miners
def test_unreachable_wrong_family_and_vanished_miners_are_device_errors():
    async def scenario():
        async with EmulatorHost() as host:
            ip = await host.add(LuxOSMiner())
            for family in ("vnish", "antminer"):               # "antminer" is the stock firmware
                with pytest.raises(DeviceError, match=f"is Antminer .*LuxOS.*family '{family}'") as e:
                    await device(ip, family=family).read()
                assert kind(e.value) == "unsupported"

            d = device(ip, timeout=3.0)
            assert (await d.read()).hashing
            await host.remove(ip)                              # the miner goes away
            with pytest.raises(DeviceError) as e:
                await d.read()
            assert kind(e.value) in ("unreachable", "timeout")
            with pytest.raises(DeviceError):
                await d.apply(0.0)

            other = host._allocate()                           # nothing listens there
            with pytest.raises(DeviceError, match="no miner") as e:
                await device(other, timeout=3.0).read()
            assert kind(e.value) == "unreachable"

    run(scenario())


@needs_miners
def test_a_miner_misidentified_while_busy_is_identified_again_after_a_failed_read():
    class BusyAtFirst(BraiinsOSMiner):
        """Its GraphQL version query fails while it is busy (asic-rs then builds its oldest
        Braiins backend, which cannot read a 25.07 miner)."""

        busy = True

        def http(self, method, path, headers, body):
            if self.busy and path == "/graphql" and b"version" in (body or b""):
                return 503, "application/json", b'{"errors": [{"message": "busy"}]}'
            return super().http(method, path, headers, body)

    async def scenario():
        async with EmulatorHost() as host:
            emu = BusyAtFirst()
            ip = await host.add(emu)
            d = device(ip, password_env="PW", environ={"PW": "root"})
            with pytest.raises(DeviceError, match="no hash rate"):
                await d.read()
            emu.busy = False
            r = await d.read()                                 # identified afresh: the 25.07 backend
            assert r.hashing and r.hashrate_hs == pytest.approx(141e12)
            assert emu.commands().count("POST /graphql") >= 4   # model + version, twice

    run(scenario())


@needs_miners
def test_a_hung_miner_is_a_timeout_within_the_configured_bound():
    async def scenario():
        loop = asyncio.get_running_loop()
        async with EmulatorHost() as host:
            emu = VNishMiner()
            ip = await host.add(emu)
            d = device(ip, password_env="PW", environ={"PW": "admin"}, timeout=1.5)
            assert (await d.read()).hashing
            emu.hang = True
            for call in (d.read(), d.apply(0.0)):
                t0 = loop.time()
                with pytest.raises(DeviceError, match="within 1.5 s") as e:
                    await call
                assert kind(e.value) == "timeout" and loop.time() - t0 < 1.5 + 2.0
            assert emu.hashing
            emu.hang = False                                   # answers again: the same driver recovers
            await d.apply(0.0)
            assert not emu.hashing

            hung = LuxOSMiner()
            hung.hang = True
            ip2 = await host.add(hung)
            t0 = loop.time()
            with pytest.raises(DeviceError) as e:              # hung while being identified
                await device(ip2, timeout=1.5).read()
            assert kind(e.value) in ("timeout", "unreachable") and loop.time() - t0 < 1.5 + 3.0

    run(scenario())


@needs_miners
def test_one_host_serves_many_miners():
    async def scenario():
        async with EmulatorHost() as host:
            emus = [LuxOSMiner() for _ in range(4)] + [BraiinsOSMiner() for _ in range(3)] + \
                [VNishMiner() for _ in range(3)]
            ips = [await host.add(e) for e in emus]
            assert len(set(ips)) == len(ips)
            devices = [device(ip, name=f"rig-{i}", **({"password_env": "PW"} if i >= 7 else {}),
                              environ={"PW": "admin"}) for i, ip in enumerate(ips)]
            await asyncio.gather(*(d.apply(0.0) for d in devices))
            assert not any(e.hashing for e in emus)
            readings = await asyncio.gather(*(d.read() for d in devices))
            assert all(r.level == 0.0 for r in readings)

    run(scenario())


@needs_low_ports
def test_emulator_answers_bad_requests_and_keeps_serving():
    async def exchange(ip: str, port: int, data: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(ip, port)
        writer.write(data)
        await writer.drain()
        if port == 4028:
            writer.write_eof()
        out = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return out

    async def scenario():
        async with EmulatorHost() as host:
            emu = LuxOSMiner()
            ip = await host.add(emu)
            reply = await exchange(ip, 4028, b"not json at all")
            assert reply.endswith(b"\x00") and b'"STATUS": "E"' in reply
            reply = await exchange(ip, 4028, b'{"command": "nosuch"}')
            assert b"Invalid command" in reply
            reply = await exchange(ip, 80, b"POST / HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 413")
            assert (await exchange(ip, 80, b"\r\n\r\n")).startswith(b"HTTP/1.1 404")
            reply = await exchange(ip, 4028, b'{"command": "summary"}')
            assert b'"GHS 5s": 59800.0' in reply and reply.endswith(b"\x00")
            assert emu.commands("rpc") == ["<malformed>", "nosuch", "summary"]

    run(scenario())


# ---- through the live scheduler -------------------------------------------------------------


@needs_miners
def test_scheduler_curtails_and_resumes_emulated_asics_by_price(tmp_path):
    """A sites document with kind = "asic" devices, the real parser, drivers, policy and
    scheduler step: price above breakeven sleeps both miners, below it wakes them."""
    from datetime import datetime, timedelta, timezone
    from pathlib import Path

    from miner.metrics import Metrics
    from miner.sched.economics import breakeven_usd_per_mwh
    from miner.sched.feeds import StaticFeed
    from miner.sched.policy import make_policy
    from miner.sched.scheduler import RetryPolicy, Scheduler, StaticHashprice
    from miner.sched.sites import parse_sites

    breakeven = breakeven_usd_per_mwh(0.05, 0.02, 20.0)
    t0 = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)

    async def no_sleep(seconds: float) -> None:
        await asyncio.sleep(0)

    async def scenario():
        async with EmulatorHost() as host:
            bos, lux = BraiinsOSMiner(password=PASSWORD), LuxOSMiner()
            bos_ip, lux_ip = await host.add(bos), await host.add(lux)
            doc = {"economics": {"hashprice_usd_per_th_day": 0.05, "pool_fee": 0.02},
                   "site": [{"name": "texas", "capacity_mw": 1.0, "efficiency_j_per_th": 20.0,
                             "feed": {"kind": "static", "price": 0.0},
                             "device": [{"kind": "asic", "name": "bos-1", "host": bos_ip, "family": "braiins",
                                         "password_env": "BOS_PW", "levels": {"1.0": 3137, "0.5": 1600}},
                                        {"kind": "asic", "name": "lux-1", "host": lux_ip, "family": "luxos"}]}]}
            fleet = parse_sites(doc, base_dir=Path(tmp_path))
            devices = [make_device(t, site="texas", environ={"BOS_PW": PASSWORD}) for t in fleet.sites[0].devices]
            feed = StaticFeed(breakeven * 0.3)
            sched = Scheduler(fleet, make_policy(fleet, "threshold"), {"texas": feed}, {"texas": devices},
                              metrics=Metrics(), hashprice_source=StaticHashprice(0.05),
                              retry=RetryPolicy(tries=2, first_delay_seconds=0.01), sleep=no_sleep)
            await sched.step(t0)
            assert bos.hashing and lux.hashing
            feed.price = breakeven * 1.3
            await sched.step(t0 + timedelta(hours=1))
            assert not bos.hashing and not lux.hashing
            assert "PUT /api/v1/actions/pause" in bos.commands() and "curtail" in lux.commands("rpc")
            feed.price = breakeven * 0.3
            await sched.step(t0 + timedelta(hours=2))
            assert bos.hashing and lux.hashing and bos.power_target == 3137

    run(scenario())


@needs_miners
def test_emulator_fleet_process_serves_until_sigterm():
    import json
    import os
    import signal
    import subprocess
    import time

    env = {**os.environ, "EMU_PW": PASSWORD}
    proc = subprocess.Popen([sys.executable, "-m", "miner.testing.asic_emulators", "--braiins", "2", "--luxos", "1",
                             "--password-env", "EMU_PW"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        while not lines or "ready" not in lines[-1]:
            line = proc.stdout.readline()
            assert line, f"emulator exited early: {proc.poll()}"
            lines.append(json.loads(line))
        assert lines[-1] == {"ready": 3}
        assert sorted(x["family"] for x in lines[:-1]) == ["braiins", "braiins", "luxos"]
        ip = next(x["ip"] for x in lines if x.get("family") == "braiins")

        async def drive():
            d = device(ip, password_env="PW", environ={"PW": PASSWORD}, levels={"1.0": 3137, "0.5": 1600})
            await d.apply(0.5)
            assert (await d.read()).level == 0.5

        run(drive())
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0 and time.monotonic() - t0 < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
