"""One table of per-network parameters (addresses, genesis, proof-of-work limits).

Values come from Bitcoin Core's src/kernel/chainparams.cpp (mainnet, testnet3,
testnet4, signet, regtest) and bcoin 1.0.x's lib/protocol/networks.js (the regtest
flavour our pinned test node runs).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Network", "NETWORKS", "get_network", "networks_sharing_prefix"]


@dataclass(frozen=True)
class Network:
    """Parameters of one Bitcoin network that the chain layer needs."""

    name: str
    bech32_hrp: str
    p2pkh_version: int
    p2sh_version: int
    genesis_hash_hex_display: str
    pow_limit: int
    # First height at which the coinbase must start with the BIP34 height push.
    bip34_height: int
    pow_no_retargeting: bool
    pow_allow_min_difficulty: bool
    default_rpc_port: int
    # Names of other networks whose addresses this network also accepts as payouts.
    also_accepts: tuple[str, ...] = ()

    def accepted_names(self) -> tuple[str, ...]:
        """This network's name followed by the names in also_accepts."""
        return (self.name, *self.also_accepts)


_MAIN_POW_LIMIT = int("00000000ffffffffffffffffffffffffffffffffffffffffffffffffffffffff", 16)
_REGTEST_POW_LIMIT = int("7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", 16)
_SIGNET_POW_LIMIT = int("00000377ae000000000000000000000000000000000000000000000000000000", 16)
_REGTEST_GENESIS = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"

# testnet3, testnet4 and signet share every prefix, so an address cannot tell them
# apart; each accepts the others' addresses rather than guessing.
_TEST_FAMILY = ("testnet", "testnet4", "signet")


def _rest_of_test_family(name: str) -> tuple[str, ...]:
    return tuple(n for n in _TEST_FAMILY if n != name)

NETWORKS: dict[str, Network] = {
    n.name: n
    for n in (
        Network(
            name="mainnet",
            bech32_hrp="bc",
            p2pkh_version=0x00,
            p2sh_version=0x05,
            genesis_hash_hex_display="000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f",
            pow_limit=_MAIN_POW_LIMIT,
            bip34_height=227931,
            pow_no_retargeting=False,
            pow_allow_min_difficulty=False,
            default_rpc_port=8332,
        ),
        Network(
            name="testnet",
            bech32_hrp="tb",
            p2pkh_version=0x6F,
            p2sh_version=0xC4,
            genesis_hash_hex_display="000000000933ea01ad0ee984209779baaec3ced90fa3f408719526f8d77f4943",
            pow_limit=_MAIN_POW_LIMIT,
            bip34_height=21111,
            pow_no_retargeting=False,
            pow_allow_min_difficulty=True,
            default_rpc_port=18332,
            also_accepts=_rest_of_test_family("testnet"),
        ),
        Network(
            name="testnet4",
            bech32_hrp="tb",
            p2pkh_version=0x6F,
            p2sh_version=0xC4,
            genesis_hash_hex_display="00000000da84f2bafbbc53dee25a72ae507ff4914b867c565be350b0da8bf043",
            pow_limit=_MAIN_POW_LIMIT,
            bip34_height=1,
            pow_no_retargeting=False,
            pow_allow_min_difficulty=True,
            default_rpc_port=48332,
            also_accepts=_rest_of_test_family("testnet4"),
        ),
        Network(
            name="signet",
            bech32_hrp="tb",
            p2pkh_version=0x6F,
            p2sh_version=0xC4,
            genesis_hash_hex_display="00000008819873e925422c1ff0f99f7cc9bbb232af63a077a480a3633bee1ef6",
            pow_limit=_SIGNET_POW_LIMIT,
            bip34_height=1,
            pow_no_retargeting=False,
            pow_allow_min_difficulty=False,
            default_rpc_port=38332,
            also_accepts=_rest_of_test_family("signet"),
        ),
        Network(
            name="regtest",
            bech32_hrp="bcrt",
            p2pkh_version=0x6F,
            p2sh_version=0xC4,
            genesis_hash_hex_display=_REGTEST_GENESIS,
            pow_limit=_REGTEST_POW_LIMIT,
            bip34_height=1,
            pow_no_retargeting=True,
            pow_allow_min_difficulty=True,
            default_rpc_port=18443,
            # Our test node is bcoin, whose regtest wallet hands out its own prefixes.
            also_accepts=("bcoin-regtest",),
        ),
        Network(
            name="bcoin-regtest",
            bech32_hrp="rb",
            p2pkh_version=0x3C,
            p2sh_version=0x26,
            genesis_hash_hex_display=_REGTEST_GENESIS,
            pow_limit=_REGTEST_POW_LIMIT,
            # bcoin 1.0.x regtest sets bip34height to 100000000, i.e. never enforced;
            # we still always write the height push, which bcoin accepts.
            bip34_height=100_000_000,
            pow_no_retargeting=True,
            pow_allow_min_difficulty=True,
            default_rpc_port=48332,
            also_accepts=("regtest",),
        ),
    )
}

# Names other tools use for the same networks: Core's getblockchaininfo "chain" field
# says "main" and "test".
_ALIASES = {"main": "mainnet", "test": "testnet", "testnet3": "testnet"}


def get_network(name: str) -> Network:
    """Look a network up by name (or Core's chain alias); ValueError lists valid names."""
    key = _ALIASES.get(name, name)
    try:
        return NETWORKS[key]
    except (KeyError, TypeError):
        valid = ", ".join(NETWORKS)
        raise ValueError(f"unknown network {name!r}; valid names: {valid}") from None


def networks_sharing_prefix(*, hrp: str | None = None, version: int | None = None) -> list[Network]:
    """Networks whose bech32 HRP equals hrp, or whose P2PKH/P2SH version equals version."""
    found = []
    for net in NETWORKS.values():
        if hrp is not None and net.bech32_hrp == hrp:
            found.append(net)
        elif version is not None and version in (net.p2pkh_version, net.p2sh_version):
            found.append(net)
    return found
