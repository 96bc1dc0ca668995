"""A first start with a cold numba cache: rigs are served while the kernel compiles, the
compile is announced, and SIGTERM during it stops the run at once (issue 11 items 5, 6)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

from miner.node.regtest import free_port
from tests.waiting import wait_port


def _first_notify(port: int, timeout: float) -> dict:
    """Subscribe and authorize as a rig would; the first mining.notify it is sent."""
    with socket.create_connection(("127.0.0.1", port), timeout) as sock:
        sock.sendall(b'{"id":1,"method":"mining.subscribe","params":["test/1.0"]}\n'
                     b'{"id":2,"method":"mining.authorize","params":["site.rig","x"]}\n')
        buf = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            assert chunk, "the server closed the connection"
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                msg = json.loads(line)
                if msg.get("method") == "mining.notify":
                    return msg
    raise AssertionError(f"no mining.notify within {timeout} s")


def test_rigs_are_served_while_the_kernel_compiles_and_sigterm_stops_it(regtest_node, tmp_path):
    node = regtest_node
    port = free_port()
    log_path = tmp_path / "miner.log"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"),  # cold: nothing compiled yet
               GRIDMINER_KERNEL_CACHE=str(tmp_path / "kernel-cache"))
    cmd = [sys.executable, "-m", "miner", "run", "--node", node.rpc_url, "--address", node.new_address("bech32"),
           "--journal", str(tmp_path / "journal.jsonl"), "--threads", "1", "--stratum", f"127.0.0.1:{port}",
           "--metrics", "off"]
    if node.kind == "bcoin":
        env.update(GRIDMINER_RPC_USER=node.auth.user, GRIDMINER_RPC_PASSWORD=node.auth.password)
    else:
        cmd += ["--rpc-cookie", str(node.auth.path)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, 120, proc, log_path)
        notify = _first_notify(port, 60)
        assert len(notify["params"]) == 9
        # A cold compile takes tens of seconds: the rig got its job long before it ended,
        # and the wait is announced.
        assert "kernel ready" not in log_path.read_text()
        deadline = time.monotonic() + 30
        while "compiling the SHA-256d kernel" not in (text := log_path.read_text()):
            assert time.monotonic() < deadline and "kernel ready" not in text, text
            time.sleep(0.1)
        # Still compiling: a stop now must not wait for the compile.
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        elapsed = time.monotonic() - t0
        print(f"SIGTERM during the kernel compile: exit after {elapsed:.2f} s")
        assert proc.returncode == 0, log_path.read_text()
        assert elapsed < 5.0, f"stopped after {elapsed:.1f} s"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
