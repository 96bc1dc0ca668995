"""Addresses to scriptPubKeys per network, and clear wrong-network errors."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miner.chain.address import (
    AddressError,
    address_to_script,
    base58check_encode,
    p2pkh_script,
    p2sh_script,
    parse_witness_script,
    script_to_address,
    segwit_address_encode,
    witness_script,
)
from miner.chain.networks import NETWORKS, get_network

from .vectors import PROPERTY, load_json

KEY_IO = load_json("key_io_valid_addresses.json")
BIP_VECTORS = load_json("bip173_bip350_vectors.json")
HASH20 = bytes(range(20))


@pytest.mark.parametrize(("address", "script_hex", "chain"), KEY_IO)
def test_core_key_io_vectors(address, script_hex, chain):
    script = bytes.fromhex(script_hex)
    assert address_to_script(address, chain) == script
    assert script_to_address(script, chain) == address
    if address.lower().startswith(("bc1", "tb1", "bcrt1")):
        assert address_to_script(address.upper(), chain) == script


def _network_for_hrp(address: str) -> str:
    return "mainnet" if address.lower().startswith("bc1") else "testnet"


@pytest.mark.parametrize(
    ("address", "script_hex"),
    BIP_VECTORS["bip350_segwit_valid"] + BIP_VECTORS["bip173_segwit_valid_v0"],
)
def test_bip_segwit_valid_addresses(address, script_hex):
    assert address_to_script(address, _network_for_hrp(address)).hex() == script_hex


@pytest.mark.parametrize(
    ("address", "reason"),
    BIP_VECTORS["bip350_segwit_invalid"]
    + BIP_VECTORS["bip173_segwit_invalid"]
    + [(a, "bech32 for v1+") for a, _ in BIP_VECTORS["bip173_segwit_v1plus_invalid_since_bip350"]],
)
@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_bip_segwit_invalid_addresses(address, reason, network):
    with pytest.raises(AddressError):
        address_to_script(address, network)


@pytest.mark.parametrize(
    ("address", "network", "message"),
    [
        ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5", "mainnet", "bad bech32 checksum"),
        ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh", "mainnet",
         "v0 address must use bech32, not bech32m"),
        ("bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7k7grplx", "mainnet",
         "v1 address must use bech32m"),
        ("tc1qw508d6qejxtdg4y5r3zarvary0c5xw7kg3g4ty", "testnet", "unknown bech32 prefix 'tc'"),
        ("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb", "mainnet", "bad base58check checksum"),
        ("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfN0", "mainnet", "invalid base58 character '0'"),
        ("", "mainnet", "non-empty"),
    ],
)
def test_malformed_address_messages(address, network, message):
    with pytest.raises(AddressError, match=message):
        address_to_script(address, network)


def test_wrong_network_bech32_message():
    address = segwit_address_encode("tb", 0, HASH20)
    with pytest.raises(AddressError) as excinfo:
        address_to_script(address, "regtest")
    assert str(excinfo.value) == (
        f"address '{address}' is for testnet/testnet4/signet, this node is regtest"
    )
    with pytest.raises(AddressError, match="is for mainnet, this node is testnet4"):
        address_to_script(segwit_address_encode("bc", 1, bytes(32)), "testnet4")
    with pytest.raises(AddressError, match="is for regtest, this node is mainnet"):
        address_to_script(segwit_address_encode("bcrt", 0, HASH20), "mainnet")


def test_wrong_network_base58_message():
    mainnet_p2pkh = base58check_encode(b"\x00" + HASH20)
    with pytest.raises(AddressError) as excinfo:
        address_to_script(mainnet_p2pkh, "regtest")
    assert "base58 version 0x00 is mainnet P2PKH, expected regtest" in str(excinfo.value)
    testnet_p2sh = base58check_encode(b"\xc4" + HASH20)
    expected = "0xc4 is testnet/testnet4/signet/regtest P2SH, expected mainnet"
    with pytest.raises(AddressError, match=expected):
        address_to_script(testnet_p2sh, "mainnet")
    with pytest.raises(AddressError, match="unknown base58 version 0x42"):
        address_to_script(base58check_encode(b"\x42" + HASH20), "mainnet")
    with pytest.raises(AddressError, match="payload is 20 bytes, expected 21"):
        address_to_script(base58check_encode(b"\x00" + HASH20[:19]), "mainnet")


@pytest.mark.parametrize("node", ["testnet", "testnet4", "signet"])
@pytest.mark.parametrize("owner", ["testnet", "testnet4", "signet"])
def test_test_networks_share_prefixes(node, owner):
    net = get_network(owner)
    for address in (
        segwit_address_encode(net.bech32_hrp, 0, HASH20),
        base58check_encode(bytes((net.p2pkh_version,)) + HASH20),
        base58check_encode(bytes((net.p2sh_version,)) + HASH20),
    ):
        assert address_to_script(address, node)


def test_bcoin_regtest_flavour_round_trip():
    bcoin = get_network("bcoin-regtest")
    cases = {
        p2pkh_script(HASH20): base58check_encode(b"\x3c" + HASH20),
        p2sh_script(HASH20): base58check_encode(b"\x26" + HASH20),
        witness_script(0, HASH20): segwit_address_encode("rb", 0, HASH20),
        witness_script(1, bytes(32)): segwit_address_encode("rb", 1, bytes(32)),
    }
    for script, address in cases.items():
        assert script_to_address(script, bcoin) == address
        # Our test node is bcoin: its addresses must be accepted under plain "regtest".
        assert address_to_script(address, "regtest") == script
        assert address_to_script(address, "bcoin-regtest") == script
    assert script_to_address(p2pkh_script(HASH20), "bcoin-regtest").startswith("R")


def test_core_regtest_addresses_accepted_by_bcoin_regtest():
    for address, script_hex, chain in KEY_IO:
        if chain == "regtest":
            assert address_to_script(address, "bcoin-regtest").hex() == script_hex


def test_bcoin_addresses_rejected_elsewhere():
    with pytest.raises(AddressError, match="is for bcoin-regtest, this node is mainnet"):
        address_to_script(segwit_address_encode("rb", 0, HASH20), "mainnet")
    with pytest.raises(AddressError, match="0x3c is bcoin-regtest P2PKH, expected testnet"):
        address_to_script(base58check_encode(b"\x3c" + HASH20), "testnet")


def test_network_argument_accepts_object_or_name():
    address = segwit_address_encode("bc", 0, HASH20)
    by_object = address_to_script(address, get_network("mainnet"))
    assert by_object == address_to_script(address, "mainnet")
    with pytest.raises(ValueError, match="unknown network"):
        address_to_script(address, "bitcoin-cash")


@pytest.mark.parametrize(
    "script_hex",
    [
        "",
        "6a24aa21a9ed" + "00" * 32,  # OP_RETURN commitment
        "41" + "04" * 65 + "ac",  # P2PK
        "0015" + "00" * 21,  # v0 with a 21-byte program
        "5101" + "00",  # v1 with a 1-byte program
        "76a91400" + "00" * 19 + "88ad",  # not quite P2PKH
    ],
)
def test_non_standard_scripts_have_no_address(script_hex):
    assert script_to_address(bytes.fromhex(script_hex), "mainnet") is None


def test_parse_witness_script():
    assert parse_witness_script(witness_script(16, b"\x75\x1e")) == (16, b"\x75\x1e")
    assert parse_witness_script(bytes.fromhex("0014") + HASH20) == (0, HASH20)
    assert parse_witness_script(bytes.fromhex("0015") + HASH20) is None
    assert parse_witness_script(bytes.fromhex("4f02aabb")) is None


@PROPERTY
@given(
    st.sampled_from(sorted(NETWORKS)),
    st.one_of(
        st.binary(min_size=20, max_size=20).map(p2pkh_script),
        st.binary(min_size=20, max_size=20).map(p2sh_script),
        st.binary(min_size=20, max_size=20).map(lambda p: witness_script(0, p)),
        st.binary(min_size=32, max_size=32).map(lambda p: witness_script(0, p)),
        st.builds(witness_script, st.integers(1, 16), st.binary(min_size=2, max_size=40)),
    ),
)
def test_script_address_round_trip(network, script):
    address = script_to_address(script, network)
    assert address is not None
    assert address_to_script(address, network) == script


def test_mixed_case_known_hrp_gets_bech32_diagnosis():
    address = segwit_address_encode("bc", 0, HASH20)
    mixed = "Bc" + address[2:]
    with pytest.raises(AddressError, match="mixes upper and lower case"):
        address_to_script(mixed, "mainnet")



def test_base58_address_that_starts_like_an_upper_case_hrp_is_base58():
    # Seen in CI: bcoin's regtest wallet handed out this P2PKH address (version 60,
    # "R..."); its first three characters read as the upper-case spelling of bcoin
    # regtest's bech32 prefix "rb", and it was refused as a bech32 string.
    address = "RB1uy2yn28BQF9pSWFrqQrwj88bwH6RDK2"
    script = address_to_script(address, "bcoin-regtest")
    assert script_to_address(script, "bcoin-regtest") == address
