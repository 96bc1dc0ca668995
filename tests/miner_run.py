"""`miner run` in a subprocess, as an operator starts it: node credentials, and a rig's first job."""

from __future__ import annotations

import json
import socket
import time


def node_credentials(node) -> tuple[dict[str, str], list[str]]:
    """(environment variables, arguments) that give `miner run --node` this test node's
    credentials: bcoin's user and password from the environment, Core's cookie file."""
    if node.kind == "bcoin":
        return {"GRIDMINER_RPC_USER": node.auth.user, "GRIDMINER_RPC_PASSWORD": node.auth.password}, []
    return {}, ["--rpc-cookie", str(node.auth.path)]


def first_notify(port: int, timeout: float = 60.0) -> dict:
    """Subscribe and authorize on 127.0.0.1:port as a rig would; the first mining.notify it is
    sent (a notify message, not the subscribe answer, which names "mining.notify" too)."""
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout) as sock:
        sock.sendall(b'{"id":1,"method":"mining.subscribe","params":[]}\n'
                     b'{"id":2,"method":"mining.authorize","params":["site.probe","x"]}\n')
        buffered = b""
        while True:
            *lines, buffered = buffered.split(b"\n")
            for line in filter(None, lines):
                msg = json.loads(line)
                if msg.get("method") == "mining.notify":
                    return msg
            assert time.monotonic() < deadline, f"no job from the stratum server: {buffered[-500:]!r}"
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            assert chunk, f"the stratum server closed the connection: {buffered[-500:]!r}"
            buffered += chunk
