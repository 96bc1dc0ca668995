"""Fixtures shared by every test package: the pinned regtest node.

`regtest_node` is one node for the whole session (bcoin, in memory, started on first
use). Use it without destroying it: read, mine, send transactions; never stop,
restart or invalidate it, and do not assume a height (other tests mine too).
`regtest_node_factory` makes fresh nodes for tests that need a known chain or that
stop, kill and restart nodes; every node it made is closed at teardown, pass or fail.
`api_node` is one node per module made by the miner.testing API itself.

Node tests skip (with the reason) only when Node.js/npm are missing; set
GRIDMINER_REGTEST_NODE=bitcoind to run them against bitcoind instead.

Real peers: `node_kind` runs a test on bcoin and, when `bitcoind` is on PATH, on Bitcoin
Core too; `minerd` starts pooler's cpuminer against a stratum URL. A peer that is on
PATH but cannot start for want of shared libraries gets them installed with apt
(miner.testing.peers.RUNTIME_APT_PACKAGES) when the tests run as root with apt-get;
otherwise its tests skip with a reason that names the packages.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

log = logging.getLogger(__name__)

# An outside project that uses the gridminer pytest plugin: run in a subprocess against
# the installed wheel by tests/testing/test_plugin_outside.py, never collected here.
collect_ignore = ["plugin_project"]


def _default_kind() -> str:
    return os.environ.get("GRIDMINER_REGTEST_NODE", "").strip() or "bcoin"


# Seconds one apt-get call may take.
APT_TIMEOUT_S = 600
# Peer name -> why it cannot run here (None: it runs), checked once per session.
_peer_problems: dict[str, str | None] = {}
# Why the runtime libraries could not be installed (None: installed), tried once per session.
_library_install: list[str | None] = []


def _apt_install_runtime_libraries() -> str | None:
    """Install the peers' runtime libraries with apt; None when done, else why not."""
    from miner.testing.peers import RUNTIME_APT_PACKAGES, may_install_packages

    if _library_install:
        return _library_install[0]
    why_not = may_install_packages()
    if why_not is None:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *RUNTIME_APT_PACKAGES]
        try:
            if subprocess.run(install, env=env, capture_output=True, timeout=APT_TIMEOUT_S).returncode != 0:
                # A fresh machine may have no package lists yet.
                subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=APT_TIMEOUT_S)
                done = subprocess.run(install, env=env, capture_output=True, timeout=APT_TIMEOUT_S)
                if done.returncode != 0:
                    why_not = f"apt-get install failed: {done.stderr.decode(errors='replace')[-300:]}"
        except subprocess.TimeoutExpired:
            why_not = f"apt-get install took over {APT_TIMEOUT_S} s"
    log.info("runtime libraries for bitcoind/minerd: %s", why_not or "installed with apt")
    _library_install.append(why_not)
    return why_not


def real_peer_problem(name: str) -> str | None:
    """Why the peer (bitcoind, bitcoin-cli, minerd) cannot run here, after installing its libraries
    when we may; None when it runs."""
    from miner.testing.peers import peer_problem

    if name not in _peer_problems:
        problem = peer_problem(name)
        if problem is not None and "missing shared libraries" in problem:
            why_not = _apt_install_runtime_libraries()
            problem = peer_problem(name) if why_not is None else f"{problem} (not installed: {why_not})"
        _peer_problems[name] = problem
    return _peer_problems[name]


def require_peer(name: str) -> None:
    """Skip the test, with the reason, when the peer cannot run here."""
    problem = real_peer_problem(name)
    if problem is not None:
        pytest.skip(problem)


def _require_tools(kind: str) -> None:
    """Skip the test when the tools for this node kind are not installed."""
    from miner.node.regtest import RegtestUnavailable, find_node_tools

    if kind == "bitcoind":
        require_peer("bitcoind")
        return
    try:
        find_node_tools()
    except RegtestUnavailable as e:
        pytest.skip(f"regtest node unavailable: {e}")


def available_node_kinds() -> list[str]:
    """bcoin always (skipped later if Node.js is missing), bitcoind when it is on PATH."""
    import shutil

    return ["bcoin"] + (["bitcoind"] if shutil.which("bitcoind") else [])


@pytest.fixture(params=available_node_kinds())
def node_kind(request) -> str:
    """Run a test once per node implementation this machine has (skipped if it cannot start here)."""
    _require_tools(request.param)
    return request.param


@pytest.fixture
def minerd() -> Iterator[Callable[..., Any]]:
    """start(url, user="gridminer.minerd", threads=1, **MinerdProcess options) -> a running
    miner.testing.MinerdProcess; every one is stopped when the test ends. Skips (saying what
    to install) when minerd is not on PATH or cannot start."""
    from miner.testing.minerd import MinerdProcess

    require_peer("minerd")
    started: list[MinerdProcess] = []

    def start(url: str, user: str = "gridminer.minerd", **kwargs: Any) -> MinerdProcess:
        process = MinerdProcess(url, user, **kwargs)
        started.append(process)
        return process.start()

    try:
        yield start
    finally:
        for process in started:
            try:
                process.stop()
            except Exception:  # keep stopping the others; the failure is in the log
                log.exception("stopping %r failed", process)


@pytest.fixture(scope="session")
def regtest_node() -> Iterator[Any]:
    """One started regtest node shared by the session (non-destructive use only)."""
    from miner.node.regtest import RegtestNode

    kind = _default_kind()
    _require_tools(kind)
    node = RegtestNode(kind, persistent=False)
    try:
        node.start()
        yield node
    finally:
        node.close()


@pytest.fixture(scope="module")
def api_node() -> Iterator[Any]:
    """One miner.testing.RegtestNode per test module (the testing API's own class and its
    default choice: bitcoind when on PATH, else bcoin), so a module knows its chain from
    height 0; skipped, with the reason, when no node can run here."""
    from miner.testing import RegtestNode, RegtestUnavailable

    node = RegtestNode()
    try:
        try:
            node.start()
        except RegtestUnavailable as e:
            pytest.skip(f"regtest node unavailable: {e}")
        yield node
    finally:
        node.close()


@pytest.fixture
def regtest_node_factory() -> Iterator[Callable[..., Any]]:
    """make(start=True, **RegtestNode kwargs) -> a fresh node, closed when the test ends."""
    from miner.node.regtest import RegtestNode

    nodes: list[RegtestNode] = []

    def make(start: bool = True, **kwargs: Any) -> RegtestNode:
        kind = kwargs.pop("kind", _default_kind())
        _require_tools(kind)
        node = RegtestNode(kind, **kwargs)
        nodes.append(node)
        if start:
            node.start()
        return node

    try:
        yield make
    finally:
        for node in nodes:
            try:
                node.close()
            except Exception:  # keep closing the others; the failure is in the log
                log.exception("closing %r failed", node)


# Why nats-server cannot run here (None: it runs), found once per session (after an apt
# install when this process may install packages).
_nats_problem: list[str | None] = []


def nats_server_problem() -> str | None:
    from miner.testing.nats import NatsUnavailable, find_nats_server, install_nats_server

    if not _nats_problem:
        try:
            find_nats_server()
            problem = None
        except NatsUnavailable as missing:
            why_not = install_nats_server()
            try:
                find_nats_server()
                problem = None
            except NatsUnavailable:
                problem = f"{missing} (not installed with apt: {why_not or 'installed, yet not found'})"
        _nats_problem.append(problem)
    return _nats_problem[0]


@pytest.fixture
def nats_server() -> Iterator[Callable[..., Any]]:
    """start(sites=(), **NatsServer options) -> a running miner.testing.nats.NatsServer with
    JetStream, a fleet user and a user per site; every one is closed when the test ends.
    Skips, with the reason, when nats-server is missing and cannot be installed."""
    from miner.testing.nats import NatsServer

    problem = nats_server_problem()
    if problem is not None:
        pytest.skip(problem)
    servers: list[NatsServer] = []

    def start(sites: Any = (), **kwargs: Any) -> NatsServer:
        server = NatsServer(sites, **kwargs)
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in servers:
            try:
                server.close()
            except Exception:
                log.exception("closing %r failed", server)
