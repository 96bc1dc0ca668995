"""Fixtures shared by every test package: the pinned regtest node.

`regtest_node` is one node for the whole session (bcoin, in memory, started on first
use). Use it without destroying it: read, mine, send transactions; never stop,
restart or invalidate it, and do not assume a height (other tests mine too).
`regtest_node_factory` makes fresh nodes for tests that need a known chain or that
stop, kill and restart nodes; every node it made is closed at teardown, pass or fail.

Node tests skip (with the reason) only when Node.js/npm are missing; set
GRIDMINER_REGTEST_NODE=bitcoind to run them against bitcoind instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

log = logging.getLogger(__name__)

# An outside project that uses the gridminer pytest plugin: run in a subprocess against
# the installed wheel by tests/testing/test_plugin_outside.py, never collected here.
collect_ignore = ["plugin_project"]


def _default_kind() -> str:
    return os.environ.get("GRIDMINER_REGTEST_NODE", "").strip() or "bcoin"


def _require_tools(kind: str) -> None:
    """Skip the test when the tools for this node kind are not installed."""
    import shutil

    from miner.node.regtest import RegtestUnavailable, find_node_tools

    if kind == "bitcoind":
        if shutil.which("bitcoind") is None:
            pytest.skip("bitcoind is not on PATH (GRIDMINER_REGTEST_NODE=bitcoind)")
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
    """Run a test once per node implementation this machine has."""
    return request.param


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
