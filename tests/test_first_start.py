"""A first start with a cold numba cache: rigs are served while the kernel compiles, the
compile is announced, and SIGTERM during it stops the run at once (issue 11 items 5, 6)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from miner.node.regtest import free_port
from tests.miner_run import first_notify, node_credentials
from tests.waiting import wait_port


def test_rigs_are_served_while_the_kernel_compiles_and_sigterm_stops_it(regtest_node, tmp_path):
    node = regtest_node
    port = free_port()
    log_path = tmp_path / "miner.log"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"),  # cold: nothing compiled yet
               GRIDMINER_CACHE_DIR=str(tmp_path / "cache"),
               GRIDMINER_KERNEL="lanes")  # the slowest compile (a minute or more): the test is no race
    cmd = [sys.executable, "-m", "miner", "run", "--node", node.rpc_url, "--address", node.new_address("bech32"),
           "--journal", str(tmp_path / "journal.jsonl"), "--threads", "1", "--stratum", f"127.0.0.1:{port}",
           "--metrics", "off"]
    credentials, args = node_credentials(node)
    env.update(credentials)
    cmd += args
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, 120, proc, log_path)
        notify = first_notify(port, 60)
        assert len(notify["params"]) == 9
        # A cold compile takes tens of seconds: the rig got its job long before it ended,
        # and the wait is announced.
        assert " ready after " not in log_path.read_text()
        deadline = time.monotonic() + 30
        while "compiling the SHA-256d kernel" not in (text := log_path.read_text()):
            assert time.monotonic() < deadline and " ready after " not in text, text
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
