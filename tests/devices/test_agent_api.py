"""The cgminer-compatible agent API over real loopback sockets.

The server runs on its own event loop in a thread; the tests talk to it the way
pyasic does (connect, send one JSON object, read to EOF, strip the trailing NUL,
json.loads) with plain blocking sockets.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miner.devices.agent_api import (
    MSG_ACCDENY,
    MSG_INVCMD,
    MSG_INVJSON,
    MSG_MISCMD,
    MSG_TIMEOUT,
    MSG_TOOBIG,
    AgentAPIConfigError,
    AgentAPIServer,
    AgentState,
)

TOKEN = "s3cret-token"


class FakeState:
    """In-memory AgentState for tests only (the real one is wired by the lead)."""

    def __init__(self) -> None:
        self.paused = False
        self.pause_calls = 0
        self.resume_calls = 0
        self.fail = False

    def stats(self) -> dict[str, Any]:
        if self.fail:
            raise RuntimeError("boom")
        return {"elapsed_s": 120.5, "hashes_total": 600_000_000, "rate_5s": 5_000_000.0,
                "rate_avg": 4_900_000.0, "accepted": 10, "rejected": 1, "stale": 2,
                "found_blocks": 0, "difficulty_accepted": 10.0, "best_share": 1234,
                "hardware_errors": 0}

    def devices(self) -> list[dict[str, Any]]:
        st_ = "Idle" if self.paused else "Alive"
        return [{"index": 0, "enabled": not self.paused, "status": st_, "rate_5s": 2.5e6,
                 "rate_avg": 2.4e6, "accepted": 5, "threads": 2},
                {"index": 1, "enabled": not self.paused, "status": st_, "rate_5s": 2.5e6,
                 "rate_avg": 2.5e6, "accepted": 5, "threads": 2}]

    def pools(self) -> list[dict[str, Any]]:
        return [{"url": "stratum+tcp://pool.example:3333", "user": "rig1.worker", "status": "Alive",
                 "priority": 0, "accepted": 10, "rejected": 1, "stratum_active": True,
                 "last_share_time": 1_700_000_000, "difficulty": 1.0}]

    def config(self) -> dict[str, Any]:
        return {"threads": 4, "pool_password": "x", "api_token": TOKEN, "mode": "agent"}

    def pause(self) -> None:
        self.pause_calls += 1
        self.paused = True

    def resume(self) -> None:
        self.resume_calls += 1
        self.paused = False


class Running:
    """An AgentAPIServer on a free loopback port, served from a background loop."""

    def __init__(self, **kw: Any) -> None:
        self.state = FakeState()
        kw.setdefault("token", TOKEN)
        self.server = AgentAPIServer(self.state, host="127.0.0.1", port=0, **kw)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(5)
        self.port = self.server.port

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()

    # -- pyasic-like client --
    def raw(self, payload: bytes, *, timeout: float = 5.0, shut: bool = False) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            if payload:
                s.sendall(payload)
            if shut:
                s.shutdown(socket.SHUT_WR)
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return out
                out += chunk

    def send(self, command: str, parameter: Any = None, **extra: Any) -> dict[str, Any]:
        cmd: dict[str, Any] = {"command": command, **extra}
        if parameter is not None:
            cmd["parameter"] = parameter
        return decode(self.raw(json.dumps(cmd).encode()))


def decode(data: bytes) -> dict[str, Any]:
    assert data.endswith(b"\x00"), data[-20:]
    return json.loads(data[:-1].decode())


def status(reply: dict[str, Any]) -> dict[str, Any]:
    return reply["STATUS"][0]


@pytest.fixture
def api() -> Iterator[Running]:
    r = Running(read_timeout=0.5)
    try:
        yield r
    finally:
        r.close()


def test_fake_state_satisfies_protocol() -> None:
    assert isinstance(FakeState(), AgentState)


def test_status_shape_and_version(api: Running) -> None:
    r = api.send("version")
    s = status(r)
    assert set(s) == {"STATUS", "When", "Code", "Msg", "Description"}
    assert s["STATUS"] == "S" and s["Code"] == 22 and s["Description"] == "gridminer/0.1"
    assert abs(s["When"] - time.time()) < 5
    assert r["VERSION"][0]["API"] and r["VERSION"][0]["CGMiner"] == "gridminer/0.1"
    assert r["id"] == 1


def test_summary_fields(api: Running) -> None:
    r = api.send("summary")
    assert status(r)["Code"] == 11
    s = r["SUMMARY"][0]
    for f in ("Elapsed", "MHS av", "MHS 5s", "Found Blocks", "Accepted", "Rejected", "Hardware Errors",
              "Difficulty Accepted", "Stale", "Best Share", "Total MH", "Utility", "Pool Rejected%"):
        assert f in s, f
    assert s["Elapsed"] == 120 and s["MHS 5s"] == 5.0 and s["MHS av"] == 4.9
    assert s["Accepted"] == 10 and s["Rejected"] == 1 and s["Best Share"] == 1234


def test_devs_fields(api: Running) -> None:
    r = api.send("devs")
    assert status(r)["Code"] == 9
    assert [d["ASC"] for d in r["DEVS"]] == [0, 1]
    d = r["DEVS"][0]
    for f in ("ASC", "Name", "ID", "Enabled", "Status", "Temperature", "MHS av", "MHS 5s", "Accepted",
              "Rejected", "Hardware Errors", "Last Share Time", "Device Elapsed"):
        assert f in d, f
    assert d["Enabled"] == "Y" and d["Status"] == "Alive" and d["MHS 5s"] == 2.5


def test_pools_fields(api: Running) -> None:
    r = api.send("pools")
    assert status(r)["Code"] == 7
    p = r["POOLS"][0]
    for f in ("POOL", "URL", "Status", "Priority", "User", "Accepted", "Rejected", "Stratum Active",
              "Last Share Time", "Stale", "Difficulty Accepted", "Stratum URL"):
        assert f in p, f
    assert p["POOL"] == 0 and p["Status"] == "Alive" and p["Stratum Active"] is True
    assert p["User"] == "rig1.worker"


def test_config_hides_secrets(api: Running) -> None:
    r = api.send("config")
    assert status(r)["Code"] == 33
    c = r["CONFIG"][0]
    assert c["ASC Count"] == 2 and c["Pool Count"] == 1 and c["threads"] == 4
    assert "pool_password" not in c and "api_token" not in c
    assert TOKEN not in json.dumps(r)


def test_stats_and_counts(api: Running) -> None:
    assert len(api.send("stats")["STATS"]) == 2
    assert api.send("asccount")["ASCS"][0]["Count"] == 2
    chk = api.send("check", "pause")["CHECK"][0]
    assert chk == {"Exists": "Y", "Access": "Y"}
    assert api.send("check", "nope")["CHECK"][0]["Exists"] == "N"


@pytest.mark.parametrize("how", ["none", "wrong", "empty"])
def test_pause_refused_without_valid_token(api: Running, how: str) -> None:
    extra = {"none": {}, "wrong": {"token": "nope"}, "empty": {"parameter": ""}}[how]
    r = api.send("pause", **extra)
    s = status(r)
    assert s["STATUS"] == "E" and s["Code"] == MSG_ACCDENY and s["Msg"] == "Access denied to 'pause' command"
    assert api.state.paused is False and api.state.pause_calls == 0
    assert api.server.errors_by_reason["access_denied"] >= 1


def test_pause_resume_with_token_field_and_parameter(api: Running) -> None:
    assert status(api.send("pause", token=TOKEN))["STATUS"] == "S"
    assert api.state.paused is True
    assert api.send("devs")["DEVS"][0]["Status"] == "Idle"
    assert status(api.send("pause", token=TOKEN))["STATUS"] == "I"  # already paused
    assert api.state.pause_calls == 1
    assert status(api.send("resume", TOKEN))["STATUS"] == "S"
    assert api.state.paused is False
    assert status(api.send("privileged", TOKEN))["Code"] == 46
    assert status(api.send("privileged"))["Code"] == MSG_ACCDENY


def test_asc_disable_enable_map_to_pause(api: Running) -> None:
    assert status(api.send("ascdisable", "0"))["Code"] == MSG_ACCDENY
    assert status(api.send("ascdisable", f"0,{TOKEN}"))["Code"] == 111
    assert api.state.paused
    assert status(api.send("pgaenable", 0, token=TOKEN))["Code"] == 110
    assert not api.state.paused
    assert status(api.send("ascenable", f"3,{TOKEN}"))["Code"] == 107


def test_no_token_configured_means_read_only() -> None:
    r = Running(token=None)
    try:
        assert status(r.send("pause", token=""))["Code"] == MSG_ACCDENY
        assert status(r.send("pause", "anything"))["Code"] == MSG_ACCDENY
        assert status(r.send("summary"))["STATUS"] == "S"
        assert not r.state.paused
    finally:
        r.close()


def test_quit_and_restart_never_stop_the_daemon(api: Running) -> None:
    assert status(api.send("quit"))["Code"] == MSG_ACCDENY
    s = status(api.send("quit", TOKEN))
    assert s["STATUS"] == "E" and "not supported" in s["Msg"]
    assert status(api.send("restart", token=TOKEN))["STATUS"] == "E"
    assert status(api.send("summary"))["STATUS"] == "S"


def test_multicommand(api: Running) -> None:
    r = api.send("summary+devs+pools+summary+bogus+pause", TOKEN)
    assert set(r) == {"summary", "devs", "pools", "bogus", "pause", "id"}
    assert r["summary"][0]["SUMMARY"][0]["Accepted"] == 10
    assert r["summary"][0]["id"] == 1
    assert len(r["devs"][0]["DEVS"]) == 2
    assert r["pools"][0]["POOLS"][0]["URL"].startswith("stratum+tcp://")
    assert status(r["bogus"][0])["Code"] == MSG_INVCMD
    assert status(r["pause"][0])["Code"] == MSG_ACCDENY  # privileged commands are not joinable
    assert not api.state.paused


def test_plain_text_form(api: Running) -> None:
    out = api.raw(b"summary")
    assert out.endswith(b"\x00")
    text = out[:-1].decode()
    assert text.startswith("STATUS=S,When=") and ",Code=11,Msg=Summary," in text
    assert "|SUMMARY,Elapsed=120," in text
    out = api.raw(f"pause|{TOKEN}\n".encode())
    assert b"STATUS=S" in out and api.state.paused
    out = api.raw(b"pools\n")[:-1].decode()
    assert "POOL=0,URL=stratum+tcp://pool.example:3333," in out
    out = api.raw(b"summary+devs\n")[:-1].decode()
    assert out.startswith("CMD=summary|STATUS=S") and "CMD=devs|STATUS=S" in out and "ASC=1," in out


@pytest.mark.parametrize("payload,code", [
    (b'{"command": "summary"', None),  # truncated: taken after the idle gap
    (b'{"command": summary}', MSG_INVJSON),
    (b'["summary"]', None),  # not an object: text form -> invalid command
    (b'{"parameter": "0"}', MSG_MISCMD),
    (b'{"command": 5}', MSG_INVCMD),
    (b'{"command": "nosuch"}', MSG_INVCMD),
    (b'{"command": ""}', MSG_INVCMD),
    (b'{"command": "summary", "parameter": {"x": 1}}', 11),
    (b'\xff\xfe{{{', None),
])
def test_bad_requests_get_error_status(api: Running, payload: bytes, code: int | None) -> None:
    out = api.raw(payload)
    assert out.endswith(b"\x00")
    if payload.startswith(b"{"):
        s = status(decode(out))
        if code is not None:
            assert s["Code"] == code
        else:
            assert s["STATUS"] == "E"
    else:
        assert out.startswith(b"STATUS=E,") and f"Code={MSG_INVCMD}".encode() in out
    assert status(api.send("summary"))["STATUS"] == "S"  # still serving


def test_truncated_json_is_invalid_json(api: Running) -> None:
    assert status(decode(api.raw(b'{"command": "summary"')))["Code"] == MSG_INVJSON
    assert api.server.errors_by_reason["invalid_json"] >= 1


def test_oversized_request() -> None:
    r = Running(max_request_bytes=1024, read_timeout=2.0)
    try:
        payload = json.dumps({"command": "summary", "parameter": "x" * 5000}).encode()
        s = status(decode(r.raw(payload)))
        assert s["Code"] == MSG_TOOBIG and s["STATUS"] == "E"
        assert r.server.errors_by_reason["oversized"] == 1
        assert status(r.send("summary"))["STATUS"] == "S"
    finally:
        r.close()


def test_slowloris_dropped_without_blocking_others(api: Running) -> None:
    idle = [socket.create_connection(("127.0.0.1", api.port)) for _ in range(5)]
    try:
        t0 = time.monotonic()
        assert status(api.send("summary"))["STATUS"] == "S"  # served while idle clients wait
        assert time.monotonic() - t0 < 0.4
        for s in idle:
            s.settimeout(3)
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            assert status(decode(data))["Code"] == MSG_TIMEOUT
        assert time.monotonic() - t0 < 2.5
        assert api.server.errors_by_reason["timeout"] == 5
    finally:
        for s in idle:
            s.close()


def test_connect_and_close_without_request(api: Running) -> None:
    assert api.raw(b"", shut=True) == b""
    assert status(api.send("summary"))["STATUS"] == "S"


def test_failing_state_gives_error_not_crash(api: Running) -> None:
    api.state.fail = True
    s = status(api.send("summary"))
    assert s["STATUS"] == "E" and "RuntimeError" in s["Msg"]
    assert api.server.errors_by_reason["state_error"] == 1
    api.state.fail = False
    assert status(api.send("summary"))["STATUS"] == "S"


def test_counters(api: Running) -> None:
    api.send("summary")
    api.send("nosuch")
    assert api.server.requests == 2
    assert api.server.commands_by_name["summary"] == 1 and api.server.commands_by_name["unknown"] == 1
    assert api.server.errors_by_reason["invalid_command"] == 1


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.168.1.10", "miner.local"])
def test_refuses_public_bind_without_token(host: str) -> None:
    srv = AgentAPIServer(FakeState(), host=host, port=0, token=None)
    with pytest.raises(AgentAPIConfigError, match="without a token"):
        asyncio.run(srv.start())
    srv2 = AgentAPIServer(FakeState(), host=host, port=0, token="")
    with pytest.raises(AgentAPIConfigError):
        srv2.check_config()


def test_public_bind_allowed_with_token() -> None:
    AgentAPIServer(FakeState(), host="0.0.0.0", port=0, token=TOKEN).check_config()
    AgentAPIServer(FakeState(), host="::1", port=0, token=None).check_config()
    AgentAPIServer(FakeState(), host="localhost", port=0, token=None).check_config()


@pytest.fixture(scope="module")
def fuzz_api() -> Iterator[Running]:
    r = Running(read_timeout=0.5, request_idle=0.05)
    try:
        yield r
    finally:
        r.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(
    st.binary(min_size=1, max_size=300),
    st.binary(max_size=200).map(lambda b: b"{" + b),
    st.text(max_size=100).map(lambda t: json.dumps({"command": t, "parameter": t}).encode()),
))
def test_random_bytes_never_crash(fuzz_api: Running, data: bytes) -> None:
    out = fuzz_api.raw(data, timeout=5)
    if out:
        assert out.endswith(b"\x00")
        body = out[:-1]
        if data.strip(b"\x00\r\n\t ")[:1] in (b"{", b""):
            assert "STATUS" in json.loads(body.decode()) or "id" in json.loads(body.decode())
        else:
            assert body.startswith((b"STATUS=", b"CMD="))  # a text multi-command reply starts with CMD=
    assert fuzz_api.server.errors_by_reason["internal"] == 0


def test_a_request_of_only_plus_signs_is_an_invalid_command(api):
    # Found by the fuzz test: "+" split into no command at all and got an empty reply.
    for request in (b"+", b"++", b'{"command":"+"}'):
        reply = api.raw(request, shut=True)
        assert b"Code=14" in reply or b'"Code":14' in reply, (request, reply)


# Tokens as operators make them: any printable text without the API's own separators.
token_text = st.text(st.characters(whitelist_categories=("L", "N", "P", "S"), blacklist_characters="|,+"),
                     min_size=8, max_size=48).map(lambda t: "Tk" + t)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(token=token_text, typo=token_text)
def test_no_token_right_or_mistyped_appears_in_a_reply_or_the_log(caplog, token, typo):
    """Tokens put where an id or a command goes (`ascdisable|<token>`, a token as the
    command) were echoed in the reply and the log line."""
    r = Running(token=token, read_timeout=0.5)
    try:
        with caplog.at_level("DEBUG", logger="miner.devices.agent_api"):
            caplog.clear()
            replies = [
                r.raw(f"ascdisable|{token}".encode(), shut=True),
                r.raw(f"ascdisable|{typo}".encode(), shut=True),
                r.raw(f"pgaenable|{typo},{token}".encode(), shut=True),
                r.raw(f"{token}|0".encode(), shut=True),
                r.raw(f"pause {token}".encode(), shut=True),
                r.raw(json.dumps({"command": token}).encode()),
                r.raw(json.dumps({"command": "ascdisable", "parameter": typo, "token": token}).encode()),
                r.raw(json.dumps({"command": "pause", "parameter": typo}).encode()),
                r.raw(json.dumps({"command": "config"}).encode()),
            ]
        shown = b"".join(replies).decode("utf-8", "replace") + caplog.text
        for secret in (token, typo):
            assert secret not in shown and secret[:20] not in shown
            assert json.dumps(secret)[1:-1] not in shown
    finally:
        r.close()
