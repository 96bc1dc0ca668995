"""A first start (empty numba cache) says it compiles, and Ctrl-C during that compile stops
the miner within seconds instead of waiting for the compile to finish."""

import os
import signal
import subprocess
import sys
import time

from miner.node.regtest import free_port

# An agent whose pool port nobody listens on: the kernel warm-up comes before any connection.
AGENT = """
import asyncio, sys
from miner.config import AgentConfig, Config, LogConfig, MetricsConfig, MiningConfig, StratumConfig, UpstreamConfig
from miner.controller import AgentMiner
from miner.metrics import Metrics
config = Config(mining=MiningConfig(mode="agent", threads=1),
                upstream=UpstreamConfig(pools=["stratum+tcp://127.0.0.1:%d"], user="site1.rig7"),
                agent=AgentConfig(api="off"), stratum=StratumConfig(listen="off"),
                metrics=MetricsConfig(listen="off"), log=LogConfig(status_interval=60))
sys.exit(asyncio.run(AgentMiner(config, metrics=Metrics()).run()))
"""


def test_ctrl_c_during_the_first_compile_stops_the_miner_quickly(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), GRIDMINER_CACHE_DIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", AGENT % free_port()], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "first start only" in line:
                break
        assert any("compiling the SHA-256d kernel for this CPU" in x for x in lines), "".join(lines)
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        rest, _ = proc.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "stopped while the kernel was compiling" in rest, "".join(lines) + rest
    assert "ready after" not in rest  # it did not sit out the compile
    assert took < 5, f"took {took:.1f} s to stop"
    assert proc.returncode == 0
