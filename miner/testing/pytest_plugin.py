"""The `gridminer` pytest plugin: regtest blocks and stratum peers as fixtures.

Installed with gridminer (entry point `pytest11`), so a project that depends on it just
uses the fixtures:

    def test_funds(regtest_node, mine_blocks):
        blocks = mine_blocks(101)          # gridminer's kernel, via getblocktemplate
        assert regtest_node.call("getblockcount") >= 101

Fixtures
    regtest_node    one RegtestNode per test module (see below), started on first use
    mine_blocks     mine_blocks(n, address=None) -> block hashes, on regtest_node
    stratum_pool    a StratumPool on regtest_node, per test; settings from the marker
                    @pytest.mark.gridminer_pool(difficulty=..., version_mask=..., ...)
    stratum_miner   a factory: stratum_miner(url=None, **StratumMiner options) -> a started
                    StratumMiner (url defaults to the stratum_pool fixture's); every miner
                    it made is closed after the test, before the pool

Options
    --gridminer-node=auto|bcoin|bitcoind   which node (auto: bitcoind when given or on
                                           PATH, else the pinned bcoin)
    --gridminer-bitcoind=PATH              the bitcoind executable to run

Why module scope for regtest_node: every test module starts from a fresh chain (height
0, empty mempool, a wallet without coins), so no module depends on which others ran
before it, while the tests of one module share one node start (about 0.5-2 s). Tests in
a module see each other's blocks; a test that needs a chain of its own uses
`with RegtestNode() as node:`.

Imports of gridminer's mining code wait until a fixture is used, so having the plugin
installed costs other test runs nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from miner.testing import RegtestNode, StratumMiner, StratumPool

__all__ = ["mine_blocks", "regtest_node", "stratum_miner", "stratum_pool"]

NODE_CHOICES = ("auto", "bcoin", "bitcoind")
POOL_MARKER = "gridminer_pool"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gridminer", "gridminer: regtest node and stratum test peers")
    group.addoption("--gridminer-node", choices=NODE_CHOICES, default="auto",
                    help="regtest node for the regtest_node fixture: auto (bitcoind when given or on PATH, "
                         "else the pinned bcoin), bcoin or bitcoind")
    group.addoption("--gridminer-bitcoind", metavar="PATH", default=None,
                    help="the bitcoind executable to run (implies --gridminer-node=bitcoind under auto)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{POOL_MARKER}(**options): StratumPool options for the stratum_pool fixture "
        "(difficulty, vardiff, version_mask, extranonce1_size, extranonce2_size, limits, address)")


@pytest.fixture(scope="module")
def regtest_node(request: pytest.FixtureRequest) -> Iterator[RegtestNode]:
    """A started regtest node for this test module; stopped and removed after its last test."""
    from miner.testing import RegtestNode

    kind = request.config.getoption("gridminer_node")
    bitcoind = request.config.getoption("gridminer_bitcoind")
    with RegtestNode(kind, bitcoind=bitcoind) as node:
        yield node


@pytest.fixture
def mine_blocks(regtest_node: RegtestNode) -> Callable[..., list[str]]:
    """mine_blocks(n, address=None): n blocks on regtest_node from gridminer's kernel; their hashes."""
    from miner.testing import mine

    def mine_blocks(n: int, address: str | None = None) -> list[str]:
        return mine(regtest_node, n, address)

    return mine_blocks


@pytest.fixture
def stratum_pool(request: pytest.FixtureRequest, regtest_node: RegtestNode) -> Iterator[StratumPool]:
    """A StratumPool on regtest_node for this test (options from @pytest.mark.gridminer_pool)."""
    from miner.testing import StratumPool

    marker = request.node.get_closest_marker(POOL_MARKER)
    if marker is not None and marker.args:
        raise pytest.UsageError(f"@pytest.mark.{POOL_MARKER} takes keyword options only, got {marker.args!r}")
    options: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    with StratumPool(regtest_node, **options) as pool:
        yield pool


@pytest.fixture
def stratum_miner(request: pytest.FixtureRequest) -> Callable[..., StratumMiner]:
    """stratum_miner(url=None, **options) -> a started StratumMiner (url default: the stratum_pool's)."""
    from miner.testing import StratumMiner

    def make(url: str | None = None, **options: Any) -> StratumMiner:
        if url is None:
            url = request.getfixturevalue("stratum_pool").url
        miner = StratumMiner(url, **options)
        # On the test item, after the pool's own teardown was registered: runs before it.
        request.node.addfinalizer(miner.close)
        miner.start()
        return miner

    return make
