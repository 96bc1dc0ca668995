"""A nats-server for the site tests (until the shared launcher lands)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from miner.node.regtest import free_port

FLEET_PASSWORD = "fleet-pw-for-tests"


def site_password(site: str) -> str:
    return f"{site}-pw-for-tests"


class LocalNats:
    def __init__(self, tmp: Path, sites: list[str]) -> None:
        exe = shutil.which("nats-server") or ("/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None)
        if exe is None:
            pytest.skip("nats-server not installed (Debian: apt-get install nats-server)")
        self.exe, self.tmp, self.sites = exe, tmp, sites
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        users = [f'{{user: fleet, password: "{FLEET_PASSWORD}", permissions: {{publish: [">"], subscribe: [">"]}}}}']
        for s in sites:
            users.append(
                f'{{user: {s}, password: "{site_password(s)}", permissions: {{'
                f'publish: {{allow: ["$JS.API.DIRECT.GET.KV_gridminer_desired.$KV.gridminer_desired.{s}", '
                f'"$KV.gridminer_reported.{s}"]}}, '
                f'subscribe: {{allow: ["$KV.gridminer_desired.{s}", "_INBOX_{s}.>"]}}}}}}')
        self.conf = tmp / "nats.conf"
        self.conf.write_text(f'listen: 127.0.0.1:{self.port}\njetstream {{ store_dir: "{tmp / "js"}" }}\n'
                             f'authorization {{ users = [\n' + "\n".join(users) + "\n] }\n")

    def start(self) -> None:
        self.log = open(self.tmp / "nats.log", "ab")
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return
            except OSError:
                assert self.proc.poll() is None, (self.tmp / "nats.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "nats-server did not listen"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


async def create_buckets(url: str):
    import nats
    from nats.js.api import KeyValueConfig

    nc = await nats.connect(url, user="fleet", password=FLEET_PASSWORD)
    js = nc.jetstream()
    desired = await js.create_key_value(KeyValueConfig(bucket="gridminer_desired", history=5, direct=True))
    reported = await js.create_key_value(KeyValueConfig(bucket="gridminer_reported", history=5, direct=True))
    return nc, desired, reported
