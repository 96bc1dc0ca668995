"""The network table: names, genesis hashes and proof-of-work limits."""

from dataclasses import replace

import pytest

from miner.chain.block import Block
from miner.chain.header import BlockHeader
from miner.chain.networks import NETWORKS, Network, get_network
from miner.chain.target import target_to_bits

from .vectors import load_json

# (time, nonce, bits) that Core's chainparams.cpp passes to CreateGenesisBlock; all
# four share the mainnet genesis coinbase, hence its merkle root.
GENESIS_PARAMS = {
    "mainnet": (1231006505, 2083236893, 0x1D00FFFF),
    "testnet": (1296688602, 414098458, 0x1D00FFFF),
    "signet": (1598918400, 52613770, 0x1E0377AE),
    "regtest": (1296688602, 2, 0x207FFFFF),
    "bcoin-regtest": (1296688602, 2, 0x207FFFFF),
}


def _mainnet_genesis_header() -> BlockHeader:
    return Block.from_bytes(bytes.fromhex(load_json("mainnet_genesis.json")["block"])).header


def test_expected_networks_present():
    assert set(NETWORKS) == {"mainnet", "testnet", "testnet4", "signet", "regtest", "bcoin-regtest"}
    assert all(isinstance(n, Network) and n.name == key for key, n in NETWORKS.items())


@pytest.mark.parametrize("name", sorted(GENESIS_PARAMS))
def test_genesis_hash_matches_chainparams(name):
    time, nonce, bits = GENESIS_PARAMS[name]
    header = replace(_mainnet_genesis_header(), time=time, nonce=nonce, bits=bits)
    assert header.hash_hex_display() == get_network(name).genesis_hash_hex_display


def test_testnet3_genesis_matches_blockfilters_vector():
    rows = load_json("testnet3_blocks_blockfilters.json")[1:]
    height, hash_display = rows[0][0], rows[0][1]
    assert height == 0
    assert get_network("testnet").genesis_hash_hex_display == hash_display


@pytest.mark.parametrize(
    ("name", "genesis_bits"),
    [
        ("mainnet", 0x1D00FFFF),
        ("testnet", 0x1D00FFFF),
        ("testnet4", 0x1D00FFFF),
        ("signet", 0x1E0377AE),
        ("regtest", 0x207FFFFF),
        ("bcoin-regtest", 0x207FFFFF),
    ],
)
def test_pow_limit_compacts_to_genesis_bits(name, genesis_bits):
    assert target_to_bits(get_network(name).pow_limit) == genesis_bits


@pytest.mark.parametrize(
    ("name", "hrp", "p2pkh", "p2sh"),
    [
        ("mainnet", "bc", 0x00, 0x05),
        ("testnet", "tb", 0x6F, 0xC4),
        ("testnet4", "tb", 0x6F, 0xC4),
        ("signet", "tb", 0x6F, 0xC4),
        ("regtest", "bcrt", 0x6F, 0xC4),
        ("bcoin-regtest", "rb", 0x3C, 0x26),
    ],
)
def test_address_prefixes(name, hrp, p2pkh, p2sh):
    net = get_network(name)
    assert (net.bech32_hrp, net.p2pkh_version, net.p2sh_version) == (hrp, p2pkh, p2sh)


def test_bip34_heights():
    assert get_network("mainnet").bip34_height == 227931
    assert get_network("testnet").bip34_height == 21111
    assert get_network("testnet4").bip34_height == 1
    assert get_network("signet").bip34_height == 1
    assert get_network("regtest").bip34_height == 1


def test_regtest_and_bcoin_regtest_accept_each_other():
    assert "bcoin-regtest" in get_network("regtest").also_accepts
    assert "regtest" in get_network("bcoin-regtest").also_accepts


def test_also_accepts_names_exist():
    for net in NETWORKS.values():
        for other in net.also_accepts:
            assert other in NETWORKS


@pytest.mark.parametrize(
    ("alias", "name"), [("main", "mainnet"), ("test", "testnet"), ("testnet3", "testnet")]
)
def test_core_chain_aliases(alias, name):
    assert get_network(alias) is NETWORKS[name]


def test_unknown_network_lists_valid_names():
    with pytest.raises(ValueError) as excinfo:
        get_network("testnet5")
    message = str(excinfo.value)
    assert "testnet5" in message
    for name in NETWORKS:
        assert name in message


def test_network_is_frozen():
    with pytest.raises(AttributeError):
        get_network("mainnet").bech32_hrp = "tb"
