"""The network table: names, genesis hashes, proof of work, ports, per-network rules.

Expected values are Bitcoin Core's src/kernel/chainparams.cpp and src/chainparamsbase.cpp,
BIP94 (testnet4) and bcoin 1.0.2's lib/protocol/networks.js, copied here independently of
the table so a wrong edit there fails.
"""

from dataclasses import replace

import pytest

from miner.chain.block import Block
from miner.chain.coinbase import encode_script_num, push_data
from miner.chain.encoding import compact_size
from miner.chain.hashes import ZERO_HASH, sha256d
from miner.chain.header import BlockHeader
from miner.chain.networks import DEFAULT_SIGNET_CHALLENGE_HEX, NETWORKS, Network, get_network
from miner.chain.target import DIFF1_TARGET, bits_to_target, target_to_bits
from miner.chain.tx import Transaction, TxIn, TxOut

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


# -- testnet4 genesis: the real block bytes (BIP94), and rebuilt as Core's CreateGenesisBlock does


def test_testnet4_genesis_block_bytes_hash_to_the_table():
    vector = load_json("testnet4_genesis.json")
    block = Block.from_bytes(bytes.fromhex(vector["block"]))
    assert block.serialize().hex() == vector["block"]
    assert block.hash_hex_display() == vector["hash"] == get_network("testnet4").genesis_hash_hex_display
    assert block.compute_merkle_root()[::-1].hex() == vector["merkleroot"]
    header = block.header
    assert (header.version, header.time, header.nonce, header.bits) == (1, 1714777860, 393743547, 0x1D00FFFF)
    assert header.prev_hash_internal == ZERO_HASH
    assert block.check(check_pow=True) == []
    assert header.target() <= get_network("testnet4").pow_limit


def test_testnet4_genesis_rebuilt_like_create_genesis_block():
    """CreateGenesisBlock(msg, <33 zero bytes> OP_CHECKSIG, 1714777860, 393743547, 0x1d00ffff, 1, 50 BTC)."""
    vector = load_json("testnet4_genesis.json")
    script_sig = (push_data(encode_script_num(486604799)) + push_data(encode_script_num(4))
                  + push_data(vector["message"].encode()))
    output_script = push_data(bytes.fromhex(vector["pubkey"])) + b"\xac"  # OP_CHECKSIG
    coinbase = Transaction(version=1, inputs=(TxIn(ZERO_HASH, 0xFFFFFFFF, script_sig),),
                           outputs=(TxOut(50 * 100_000_000, output_script),))
    header = BlockHeader(version=1, prev_hash_internal=ZERO_HASH,
                         merkle_root_internal=coinbase.txid_internal(), time=vector["time"],
                         bits=int(vector["bits"], 16), nonce=vector["nonce"])
    assert header.hash_hex_display() == get_network("testnet4").genesis_hash_hex_display
    assert Block(header, (coinbase,)).serialize().hex() == vector["block"]


# -- ports, timing, rules


@pytest.mark.parametrize(
    ("name", "p2p", "rpc"),
    [
        ("mainnet", 8333, 8332),
        ("testnet", 18333, 18332),
        ("testnet4", 48333, 48332),
        ("signet", 38333, 38332),
        ("regtest", 18444, 18443),
        ("bcoin-regtest", 48444, 48332),
    ],
)
def test_default_ports(name, p2p, rpc):
    net = get_network(name)
    assert (net.default_p2p_port, net.default_rpc_port) == (p2p, rpc)


@pytest.mark.parametrize(
    ("name", "spacing", "timespan", "interval"),
    [
        ("mainnet", 600, 14 * 24 * 3600, 2016),
        ("testnet", 600, 14 * 24 * 3600, 2016),
        ("testnet4", 600, 14 * 24 * 3600, 2016),
        ("signet", 600, 14 * 24 * 3600, 2016),
        ("regtest", 600, 24 * 3600, 144),  # Core's regtest: one-day periods
        ("bcoin-regtest", 600, 14 * 24 * 3600, 2016),
    ],
)
def test_retarget_timing(name, spacing, timespan, interval):
    net = get_network(name)
    assert (net.target_spacing_s, net.target_timespan_s, net.difficulty_adjustment_interval) == \
        (spacing, timespan, interval)


@pytest.mark.parametrize(
    ("name", "min_difficulty", "no_retargeting", "bip94", "signet"),
    [
        ("mainnet", False, False, False, False),
        ("testnet", True, False, False, False),
        ("testnet4", True, False, True, False),
        ("signet", False, False, False, True),
        ("regtest", True, True, False, False),
        ("bcoin-regtest", True, True, False, False),  # targetReset / noRetargeting
    ],
)
def test_consensus_flags(name, min_difficulty, no_retargeting, bip94, signet):
    net = get_network(name)
    assert (net.pow_allow_min_difficulty, net.pow_no_retargeting, net.enforce_bip94, net.signet_blocks) == \
        (min_difficulty, no_retargeting, bip94, signet)


@pytest.mark.parametrize(
    ("name", "bits"),
    [("mainnet", 0x1D00FFFF), ("testnet", 0x1D00FFFF), ("testnet4", 0x1D00FFFF),
     ("signet", 0x1E0377AE), ("regtest", 0x207FFFFF), ("bcoin-regtest", 0x207FFFFF)],
)
def test_pow_limit_bits(name, bits):
    net = get_network(name)
    assert net.pow_limit_bits == bits
    # The compact form drops low-order bits: its target is at most the limit, never above.
    dropped = net.pow_limit - bits_to_target(bits)
    assert 0 <= dropped < 1 << (8 * ((bits >> 24) - 3))


def test_testnet_minimum_difficulty_is_difficulty_one():
    assert bits_to_target(get_network("testnet4").pow_limit_bits) == DIFF1_TARGET


def test_default_signet_challenge_gives_the_public_signets_message_start():
    """Core: message start = first 4 bytes of sha256d(serialized challenge script); the public
    signet's is 0a03cf40 (en.bitcoin.it/wiki/Signet), so the table's challenge is that one."""
    challenge = bytes.fromhex(DEFAULT_SIGNET_CHALLENGE_HEX)
    assert sha256d(compact_size(len(challenge)) + challenge)[:4].hex() == "0a03cf40"
    assert get_network("signet").signet_challenge_hex == DEFAULT_SIGNET_CHALLENGE_HEX
    # OP_1 <33-byte key> <33-byte key> OP_2 OP_CHECKMULTISIG: 1-of-2, so a signature.
    assert (challenge[0], challenge[1], challenge[35], challenge[-2:]) == (0x51, 33, 33, b"\x52\xae")


def test_only_signet_has_a_challenge():
    assert [n.name for n in NETWORKS.values() if n.signet_challenge_hex] == ["signet"]


@pytest.mark.parametrize("alias", ["main", "test", "testnet4", "signet", "regtest"])
def test_every_core_chain_name_resolves(alias):
    """getblockchaininfo "chain" values (Core's ChainTypeToString)."""
    assert get_network(alias).name in NETWORKS
