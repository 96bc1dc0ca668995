"""Fixtures for the miner.testing tests: nodes made by the API under test.

`api_node` is one miner.testing.RegtestNode per test module (the API's own class and
its default choice of node), so a module knows its chain from height 0. Tests that
only need some node use the session-wide `regtest_node` of tests/conftest.py.
Node tests skip (with the reason) only when no node can run here.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from miner.testing import RegtestNode, RegtestUnavailable


@pytest.fixture(scope="module")
def api_node() -> Iterator[RegtestNode]:
    node = RegtestNode()
    try:
        try:
            node.start()
        except RegtestUnavailable as e:
            pytest.skip(f"regtest node unavailable: {e}")
        yield node
    finally:
        node.close()
