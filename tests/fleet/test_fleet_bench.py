"""benchmarks/fleet_bus.py with tiny numbers on a real nats-server: every device of every
site applied and acknowledged in each round, the figures filled in, the output parses,
and an interrupted run leaves no process behind."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from miner.node.regtest import free_port

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "fleet_bus.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("fleet_bus_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module    # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_every_device_of_every_site_is_applied_and_acked_in_each_round(nats_server):
    bench = load_bench()
    opts = bench.Options(sites=3, devices=2, processes=1, rounds=2, interval=0.5, idle_seconds=1.0, timeout=180)
    server = nats_server(sites=bench.site_names(opts.sites), monitor_port=free_port())
    result = asyncio.run(bench.benchmark(opts, server))

    assert [r["level"] for r in result["rounds"]] == [0.0, 1.0]
    for r in result["rounds"]:
        assert not r["timed_out"]
        assert r["devices_applied"] == r["devices"] == 6
        assert r["sites_acked"] == r["sites"] == 3
        assert r["device_applied_from_flip_s"]["n"] == 6
        assert r["device_applied_from_flip_s"]["p99"] > 0
        assert r["site_ack_from_flip_s"]["n"] == 3
        for part in ("poll_delay", "fleet", "delivery", "apply", "ack"):
            assert r["breakdown_s"][part]["n"] == 3, part
        assert r["bus_in_msgs"] > 0 and r["bus_out_msgs"] > 0
        assert r["fleet_round"]["step_phase_mean_s"]["decide"] is not None
        assert r["cpu_s"]["fleet"] is not None and r["cpu_s"]["site_processes"] is not None
    assert result["idle"]["rounds"] >= 1
    assert result["machine"]["cores"] >= 1 and len(result["machine"]["load_after"]) == 3
    text = bench.render(result)
    assert "price change -> device applied" in text and "feed poll delay" in text
    assert json.loads(json.dumps(result)) == result


def nats_problem() -> str | None:
    from tests.conftest import nats_server_problem

    return nats_server_problem()


def bench_command(*extra: str) -> list[str]:
    return [sys.executable, str(BENCH), "--sites", "2", "--devices", "2", "--processes", "2", "--interval", "0.5",
            "--idle-seconds", "1", "--timeout", "180", *extra]


def test_the_command_prints_json():
    problem = nats_problem()
    if problem:
        pytest.skip(problem)
    out = subprocess.run(bench_command("--rounds", "1", "--json"), capture_output=True, text=True, timeout=600,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    [r] = result["rounds"]
    assert r["devices_applied"] == 4 and r["sites_acked"] == 2
    assert result["summary"]["target_p99_s"] == 5.0


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{pid}\n" in status:
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_ctrl_c_stops_every_process_it_started():
    problem = nats_problem()
    if problem:
        pytest.skip(problem)
    proc = subprocess.Popen(bench_command("--rounds", "50"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    try:
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "round 1:" in line:
                break
        else:
            pytest.fail("the benchmark ended before its first round:\n" + "".join(seen))
        started = children(proc.pid)
        assert len(started) >= 4, started     # nats-server, miner fleet, two site processes
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in started if alive(pid)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
