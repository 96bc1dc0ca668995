"""cgminer-API drivers over real loopback sockets.

AgentDevice talks to the real AgentAPIServer; CgminerDevice to CgminerEmulator (bmminer,
cgminer and LuxOS shapes). The reply parser gets property tests (NUL, split reads, junk).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miner.devices.agent_api import AgentAPIServer, to_text
from miner.devices.cgminer import (
    AgentDevice,
    CgminerClient,
    CgminerDevice,
    CgminerError,
    ReplyAssembler,
    check_status,
    decode_reply,
    hashrate_hs,
    parse_text_reply,
)
from miner.node.regtest import free_port
from miner.devices.model import DeviceError
from tests.devices.emulators import CgminerEmulator

TOKEN = "agent-token-7f3a"


def run(coro):
    return asyncio.run(coro)


def kind(err: BaseException) -> str:
    return getattr(err, "kind", "?")


# ---------------------------------------------------------------------------------
# the pure parser


def test_json_reply_with_nul_terminator_and_bytes_after_it():
    reply = decode_reply(b'{"STATUS":[{"STATUS":"S","Code":11}],"SUMMARY":[{"MHS 5s":1.5}],"id":1}\x00junk')
    assert reply["SUMMARY"][0]["MHS 5s"] == 1.5


def test_bmminer_stats_rows_without_a_comma_are_repaired():
    raw = b'{"STATUS":[{"STATUS":"S"}],"STATS":[{"BMMiner":"1.0.0"}{"STATS":0,"GHS 5s":"13759.68"}],"id":1}\x00'
    reply = decode_reply(raw)
    assert [sorted(r) for r in reply["STATS"]] == [["BMMiner"], ["GHS 5s", "STATS"]]


def test_text_reply_is_parsed_into_the_json_layout():
    text = ("STATUS=S,When=1700000000,Code=11,Msg=Summary,Description=cgminer 4.11.1|"
            "SUMMARY,Elapsed=120,MHS 5s=5.0,Paused=false,Pool=a\\,b\\=c|")
    reply = decode_reply(text.encode() + b"\x00")
    assert reply["STATUS"][0] == {"STATUS": "S", "When": 1700000000, "Code": 11, "Msg": "Summary",
                                  "Description": "cgminer 4.11.1"}
    assert reply["SUMMARY"] == [{"Elapsed": 120, "MHS 5s": 5.0, "Paused": False, "Pool": "a,b=c"}]
    devs = parse_text_reply("STATUS=S,Code=9|ASC=0,Enabled=Y|ASC=1,Enabled=N|")
    assert [r["Enabled"] for r in devs["DEVS"]] == ["Y", "N"]
    with pytest.raises(DeviceError, match="without STATUS"):
        parse_text_reply("SUMMARY,MHS 5s=1|")


@pytest.mark.parametrize("raw, fragment", [
    (b"", "empty"),
    (b"\x00", "empty"),
    (b"   \r\n\x00", "empty"),
    (b"<html>busy</html>\x00", "neither JSON nor"),
    (b'{"STATUS": [\x00', "not JSON"),
    (b"[1, 2, 3]\x00", "neither JSON nor"),
    (b'"text"\x00', "neither JSON nor"),
    (b"STATUS=S|SUMMARY,Elapsed=1,oops|\x00", "field without"),
    (b"SUMMARY,MHS 5s=1|\x00", "neither JSON nor"),
])
def test_junk_is_a_malformed_device_error(raw, fragment):
    with pytest.raises(DeviceError, match=fragment) as e:
        decode_reply(raw)
    assert kind(e.value) == "malformed"


def test_oversized_reply_is_refused_before_it_eats_memory():
    asm = ReplyAssembler(max_bytes=100)
    asm.feed(b"x" * 60)
    with pytest.raises(DeviceError, match="over 100 bytes"):
        asm.feed(b"x" * 60)


def test_status_severity_and_code():
    ok = {"STATUS": [{"STATUS": "I", "Code": 108, "Msg": "ASC 0 already enabled"}]}
    assert check_status(ok, "ascenable") is ok
    with pytest.raises(CgminerError) as e:
        check_status({"STATUS": [{"STATUS": "E", "Code": 45, "Msg": "Access denied to 'pause' command"}]}, "pause")
    assert (e.value.code, e.value.severity, e.value.kind) == (45, "E", "refused")
    assert "Access denied" in str(e.value) and isinstance(e.value, DeviceError)
    with pytest.raises(CgminerError) as e:
        check_status({"STATUS": [{"STATUS": "F", "Code": 213, "Msg": "Internal error"}]}, "summary")
    assert e.value.severity == "F"
    with pytest.raises(CgminerError) as e:  # Whatsminer-style flat status
        check_status({"STATUS": "E", "Code": 14, "Msg": "invalid cmd"}, "x")
    assert e.value.code == 14
    for bad in ({}, {"STATUS": []}, {"STATUS": [{"STATUS": "Q"}]}, {"STATUS": 3}):
        with pytest.raises(DeviceError) as e:
            check_status(bad, "summary")
        assert kind(e.value) == "malformed"


def test_hashrate_units_and_the_average_is_never_taken_for_the_current_rate():
    assert hashrate_hs({"MHS 5s": 5.0}) == 5e6
    assert hashrate_hs({"GHS 5s": "13,759.68"}) == pytest.approx(13759.68e9)
    assert hashrate_hs({"THS 5s": 0.5}) == 0.5e12
    assert hashrate_hs({"GHS av": 13500.0, "MHS 1m": 2.0}) == 2e6
    assert hashrate_hs({"GHS av": 13500.0}) is None
    assert hashrate_hs({"MHS 5s": "n/a", "GHS 5s": 1.0}) == 1e9


# JSON values a miner could send (no NaN: json.dumps would write it, and cgminer never does).
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**53, 2**53),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
rows_st = st.lists(st.dictionaries(st.text(min_size=1, max_size=12), json_scalars, max_size=6), max_size=4)
replies = st.fixed_dictionaries(
    {"STATUS": st.just([{"STATUS": "S", "When": 1, "Code": 11, "Msg": "Summary", "Description": "x"}])},
    optional={"SUMMARY": rows_st, "DEVS": rows_st, "POOLS": rows_st, "id": st.just(1)})


def feed_split(data: bytes, cuts: list[int]) -> tuple[bytes, bool]:
    asm = ReplyAssembler()
    points = sorted({min(c, len(data)) for c in cuts}) + [len(data)]
    start = 0
    for p in points:
        if asm.feed(data[start:p]):
            break
        start = p
    return asm.reply(), asm.complete


@settings(max_examples=300, deadline=None)
@given(reply=replies, cuts=st.lists(st.integers(0, 4000), max_size=12),
       tail=st.binary(max_size=30), ascii_only=st.booleans())
def test_any_reply_survives_any_split_with_junk_after_the_terminator(reply, cuts, tail, ascii_only):
    data = json.dumps(reply, ensure_ascii=ascii_only).encode() + b"\x00" + tail
    body, complete = feed_split(data, cuts)
    assert complete
    assert decode_reply(body) == reply


@settings(max_examples=300, deadline=None)
@given(reply=replies, cut=st.integers(0, 4000))
def test_a_reply_cut_by_eof_either_decodes_whole_or_is_malformed(reply, cut):
    data = json.dumps(reply).encode()
    body, complete = feed_split(data[:cut], [])
    assert not complete
    try:
        assert decode_reply(body) == reply  # only possible when nothing was cut off
    except DeviceError as e:
        assert kind(e) == "malformed"


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise_device_error_never_anything_else(raw):
    try:
        out = decode_reply(raw)
    except DeviceError as e:
        assert kind(e) == "malformed"
    else:
        assert isinstance(out, dict)


def _not_numeric(s: str) -> bool:
    try:
        float(s)
        return False
    except ValueError:
        return s not in ("true", "false")


text_values = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=15).filter(_not_numeric)
text_keys = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=10).filter(
    lambda k: k not in ("STATUS", "ASC", "PGA", "GPU", "POOL", "STATS"))


@settings(max_examples=200, deadline=None)
@given(summary=st.dictionaries(text_keys, st.one_of(text_values, st.integers(-10**9, 10**9), st.booleans()),
                               min_size=1, max_size=6))
def test_text_form_round_trips_through_the_agent_renderer(summary):
    reply = {"STATUS": [{"STATUS": "S", "When": 5, "Code": 11, "Msg": "Summary", "Description": "d"}],
             "SUMMARY": [summary]}
    assert parse_text_reply(to_text(reply)) == reply


# ---------------------------------------------------------------------------------
# AgentDevice against the real agent API server


class RigState:
    """A tiny AgentState: 4 MH/s while running; `stuck` rigs never restart hashing."""

    def __init__(self, stuck: bool = False) -> None:
        self.paused = False
        self.stuck = stuck
        self.rate_hs = 4.0e6
        self.calls: list[str] = []

    def stats(self) -> dict[str, Any]:
        r = 0.0 if self.paused else self.rate_hs
        return {"elapsed_s": 60, "hashes_total": 240e6, "rate_5s": r, "rate_avg": self.rate_hs,
                "accepted": 3, "rejected": 0, "stale": 0, "found_blocks": 0,
                "difficulty_accepted": 3.0, "best_share": 9, "hardware_errors": 0}

    def devices(self) -> list[dict[str, Any]]:
        return [{"index": 0, "enabled": not self.paused, "status": "Idle" if self.paused else "Alive",
                 "rate_5s": self.stats()["rate_5s"], "rate_avg": self.rate_hs, "threads": 2}]

    def pools(self) -> list[dict[str, Any]]:
        return []

    def config(self) -> dict[str, Any]:
        return {}

    def pause(self) -> None:
        self.calls.append("pause")
        self.paused = True

    def resume(self) -> None:
        self.calls.append("resume")
        self.paused = False
        if self.stuck:
            self.rate_hs = 0.0


async def agent_server(state: RigState) -> AgentAPIServer:
    server = AgentAPIServer(state, host="127.0.0.1", port=0, token=TOKEN, read_timeout=1.0)
    await server.start()
    return server


@pytest.mark.parametrize("text", [False, True], ids=["json", "text"])
def test_agent_curtails_and_resumes_a_real_agent(text):
    async def scenario():
        state = RigState()
        server = await agent_server(state)
        try:
            dev = AgentDevice("rig-1", "127.0.0.1", server.port, TOKEN, timeout=2.0, power_w=120.0, text=text)
            r = await dev.read()
            assert (r.hashing, r.hashrate_hs, r.power_w, r.level) == (True, 4.0e6, 120.0, 1.0)

            await dev.apply(0.0)
            assert state.paused and state.calls == ["pause"]
            r = await dev.read()
            assert (r.hashing, r.hashrate_hs, r.power_w, r.level) == (False, 0.0, 0.0, 0.0)

            await dev.apply(0.0)  # already paused: STATUS I, still fine, no second pause
            assert state.calls == ["pause"]

            await dev.apply(0.7)
            assert not state.paused and state.calls == ["pause", "resume"]
            assert (await dev.read()).hashing
            assert server.commands_by_name["pause"] == 2 and server.commands_by_name["resume"] == 1
        finally:
            await server.stop()

    run(scenario())


def test_agent_that_does_not_restart_hashing_is_read_as_not_hashing():
    async def scenario():
        state = RigState(stuck=True)
        server = await agent_server(state)
        try:
            dev = AgentDevice("rig-1", "127.0.0.1", server.port, TOKEN, timeout=2.0)
            await dev.apply(0.0)
            await dev.apply(1.0)  # accepted by the API...
            r = await dev.read()  # ...but the rig reports no hashing: not counted
            assert (r.hashing, r.hashrate_hs, r.level) == (False, 0.0, 1.0)
        finally:
            await server.stop()

    run(scenario())


def test_agent_refuses_a_wrong_token_with_its_code_and_no_token_never_connects():
    async def scenario():
        state = RigState()
        server = await agent_server(state)
        try:
            with pytest.raises(CgminerError) as e:
                await AgentDevice("rig-1", "127.0.0.1", server.port, "wrong", timeout=2.0).apply(0.0)
            assert e.value.code == 45 and e.value.command == "pause"
            assert not state.paused
            before = server.requests
            with pytest.raises(DeviceError, match="needs a token") as e:
                await AgentDevice("rig-1", "127.0.0.1", server.port, None, timeout=2.0).apply(0.0)
            assert kind(e.value) == "unsupported" and server.requests == before
        finally:
            await server.stop()

    run(scenario())


def test_client_never_shows_the_token():
    c = CgminerClient("127.0.0.1", 4028, token=TOKEN)
    assert TOKEN not in repr(c)
    assert TOKEN not in repr(AgentDevice("rig", "127.0.0.1", 4028, TOKEN))
    assert json.loads(c.encode_request("pause", with_token=True)) == {"command": "pause", "token": TOKEN}
    assert json.loads(c.encode_request("summary")) == {"command": "summary"}
    t = CgminerClient("127.0.0.1", 4028, token=TOKEN, text=True)
    assert t.encode_request("ascdisable", "0", with_token=True) == f"ascdisable|0,{TOKEN}".encode()


# ---------------------------------------------------------------------------------
# stock Antminer (bmminer): read-only


def test_bmminer_read_maps_the_ghs_string_and_models_power_from_the_nameplate():
    async def scenario():
        async with CgminerEmulator(firmware="bmminer", hashrate_ghs=13_500.0) as emu:
            dev = CgminerDevice("s9", "127.0.0.1", emu.port, power_w=1_350.0, hashrate_ths=13.5, timeout=2.0)
            r = await dev.read()
            assert r.hashing and r.hashrate_hs == pytest.approx(13.5e12)
            assert r.power_w == pytest.approx(1_350.0) and r.level == 1.0
            emu.enabled[0] = False  # one chain died: a third less hash rate, modelled power follows
            r = await dev.read()
            assert r.hashrate_hs == pytest.approx(9.0e12) and r.power_w == pytest.approx(900.0)
            stats = await dev.client.stats()  # bmminer's comma-less STATS rows
            assert stats["STATS"][1]["chain_acn1"] == 110
            assert emu.commands() == [("summary", None), ("summary", None), ("stats", None)]

    run(scenario())


def test_stock_firmware_refuses_level_zero_without_sending_anything():
    async def scenario():
        async with CgminerEmulator(firmware="bmminer") as emu:
            dev = CgminerDevice("s9", "127.0.0.1", emu.port, timeout=2.0)
            with pytest.raises(DeviceError, match="cannot curtail: firmware has no sleep command") as e:
                await dev.apply(0.0)
            assert kind(e.value) == "unsupported"
            await dev.apply(1.0)  # already hashing: nothing to send
            assert emu.requests == []
            with pytest.raises(ValueError):
                await dev.apply(1.5)

    run(scenario())


# ---------------------------------------------------------------------------------
# ascdisable / ascenable


def test_ascdisable_disables_each_enabled_asc_and_ascenable_brings_them_back():
    async def scenario():
        async with CgminerEmulator(firmware="cgminer", hashrate_ghs=300.0, asc_commands=True) as emu:
            dev = CgminerDevice("rig", "127.0.0.1", emu.port, curtail="ascdisable", timeout=2.0)
            assert (await dev.read()).hashrate_hs == pytest.approx(300e9)
            emu.enabled[1] = False  # someone disabled one already
            emu.requests.clear()
            await dev.apply(0.0)
            assert emu.commands() == [("devs", None), ("ascdisable", "0"), ("ascdisable", "2")]
            r = await dev.read()
            assert (r.hashing, r.hashrate_hs, r.level) == (False, 0.0, 0.0)
            emu.requests.clear()
            await dev.apply(1.0)
            assert emu.commands() == [("devs", None), ("ascenable", "0"), ("ascenable", "1"), ("ascenable", "2")]
            assert (await dev.read()).hashrate_hs == pytest.approx(300e9)

    run(scenario())


def test_ascdisable_on_firmware_without_it_is_the_miners_refusal_with_its_code():
    async def scenario():
        async with CgminerEmulator(firmware="cgminer", asc_commands=False) as emu:
            dev = CgminerDevice("rig", "127.0.0.1", emu.port, curtail="ascdisable", timeout=2.0)
            with pytest.raises(CgminerError) as e:
                await dev.apply(0.0)
            assert (e.value.code, e.value.command) == (14, "ascdisable")

    run(scenario())


# ---------------------------------------------------------------------------------
# LuxOS


def test_luxos_sleep_and_wakeup_send_exactly_the_documented_commands():
    async def scenario():
        async with CgminerEmulator(firmware="luxos", hashrate_ghs=104_000.0, power_w=3_250.0) as emu:
            dev = CgminerDevice("s19j", "127.0.0.1", emu.port, curtail="luxos", timeout=2.0)
            r = await dev.read()
            assert (r.hashing, r.hashrate_hs, r.power_w) == (True, pytest.approx(104e12), 3_250.0)
            emu.requests.clear()

            await dev.apply(0.0)
            (c1, _), (c2, p2), (c3, p3) = emu.commands()
            sid = p3
            assert (c1, c2, c3) == ("logon", "curtail", "logoff") and p2 == f"{sid},sleep"
            assert emu.session is None  # logged off
            r = await dev.read()
            assert (r.hashing, r.hashrate_hs, r.power_w, r.level) == (False, 0.0, 14.0, 0.0)

            emu.requests.clear()
            await dev.apply(1.0)
            cmds = emu.commands()
            sid = cmds[-1][1]
            assert cmds == [("summary", None), ("logon", None), ("curtail", f"{sid},wakeup"), ("logoff", sid)]
            r = await dev.read()
            assert r.hashing and r.power_w == 3_250.0

            emu.requests.clear()
            await dev.apply(1.0)  # already awake: a second wakeup would re-ramp the boards
            assert emu.commands() == [("summary", None)]

    run(scenario())


def test_luxos_reuses_a_session_another_tool_holds_and_leaves_it_open():
    async def scenario():
        async with CgminerEmulator(firmware="luxos") as emu:
            emu.foreign_session = "Xy12ab34"
            dev = CgminerDevice("s19j", "127.0.0.1", emu.port, curtail="luxos", timeout=2.0)
            await dev.apply(0.0)
            assert emu.commands() == [("logon", None), ("session", None), ("curtail", "Xy12ab34,sleep")]
            assert emu.foreign_session == "Xy12ab34" and emu.sleeping

    run(scenario())


def test_luxos_refusal_keeps_its_code_and_the_session_is_still_closed():
    async def scenario():
        async with CgminerEmulator(firmware="luxos") as emu:
            emu.fail["curtail"] = ("E", 336, "Curtail failed: PSU error")
            dev = CgminerDevice("s19j", "127.0.0.1", emu.port, curtail="luxos", timeout=2.0)
            with pytest.raises(CgminerError) as e:
                await dev.apply(0.0)
            assert (e.value.code, e.value.msg) == (336, "Curtail failed: PSU error")
            assert emu.commands()[-1][0] == "logoff" and emu.session is None
            assert not emu.sleeping

    run(scenario())


def test_luxos_miner_that_does_not_wake_reads_as_not_hashing():
    async def scenario():
        async with CgminerEmulator(firmware="luxos") as emu:
            dev = CgminerDevice("s19j", "127.0.0.1", emu.port, curtail="luxos", timeout=2.0)
            await dev.apply(0.0)
            emu.wake_fails = True
            await dev.apply(1.0)  # the miner says "Curtailment command sent"...
            r = await dev.read()  # ...and keeps sleeping: reported, not counted as hashing
            assert (r.hashing, r.hashrate_hs, r.level) == (False, 0.0, 0.0)
            emu.requests.clear()
            await dev.apply(1.0)  # a retry sends wakeup again (it is still at 0 H/s)
            assert [c for c, _ in emu.commands()] == ["summary", "logon", "curtail", "logoff"]

    run(scenario())


# ---------------------------------------------------------------------------------
# failures: bounded, typed


@pytest.mark.parametrize("broken, expect", [
    ("garbage", "neither JSON nor"),
    ("empty", "empty reply"),
    ("truncated", "not JSON"),
])
def test_broken_replies_are_malformed_device_errors(broken, expect):
    async def scenario():
        async with CgminerEmulator() as emu:
            emu.broken = broken
            with pytest.raises(DeviceError, match=expect) as e:
                await CgminerDevice("s9", "127.0.0.1", emu.port, timeout=2.0).read()
            assert kind(e.value) == "malformed"

    run(scenario())


def test_a_hanging_miner_times_out_within_the_bound():
    async def scenario():
        async with CgminerEmulator() as emu:
            emu.broken = "hang"
            dev = CgminerDevice("s9", "127.0.0.1", emu.port, timeout=0.3)
            t0 = time.monotonic()
            with pytest.raises(DeviceError, match="within 0.3 s") as e:
                await dev.read()
            assert kind(e.value) == "timeout"
            assert time.monotonic() - t0 < 1.5

    run(scenario())


def test_unreachable_miner_is_a_device_error():
    async def scenario():
        dev = CgminerDevice("s9", "127.0.0.1", free_port(), timeout=2.0)
        with pytest.raises(DeviceError) as e:
            await dev.read()
        assert kind(e.value) == "unreachable" and "127.0.0.1" in str(e.value)

    run(scenario())


def test_reply_arriving_in_small_pieces_is_reassembled():
    async def scenario():
        async with CgminerEmulator(firmware="cgminer", hashrate_ghs=250.0) as emu:
            emu.chunk_size = 7
            r = await CgminerDevice("rig", "127.0.0.1", emu.port, timeout=5.0).read()
            assert r.hashrate_hs == pytest.approx(250e9)

    run(scenario())


def test_error_status_from_the_miner_is_a_cgminer_error_with_the_code():
    async def scenario():
        async with CgminerEmulator() as emu:
            emu.fail["summary"] = ("E", 45, "Access denied to 'summary' command")
            with pytest.raises(CgminerError) as e:
                await CgminerDevice("s9", "127.0.0.1", emu.port, timeout=2.0).read()
            assert e.value.code == 45 and isinstance(e.value, DeviceError)

    run(scenario())


def test_text_only_firmware_is_read_through_the_text_form():
    async def scenario():
        async with CgminerEmulator(firmware="cgminer", hashrate_ghs=120.0) as emu:
            r = await CgminerDevice("old", "127.0.0.1", emu.port, timeout=2.0, text=True).read()
            assert r.hashrate_hs == pytest.approx(120e9)
            assert emu.commands() == [("summary", None)]

    run(scenario())
