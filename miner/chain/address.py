"""Payout addresses to scriptPubKeys and back, checked against the node's network.

Base58Check P2PKH/P2SH and segwit (Bech32 v0, Bech32m v1+). An address for another
network is rejected with a message naming both networks, because paying a block
reward to a testnet address on mainnet burns it.
"""

from __future__ import annotations

from .base58 import (
    Base58Error,
    base58_decode,
    base58_encode,
    base58check_decode,
    base58check_encode,
)
from .bech32 import (
    Bech32Error,
    Encoding,
    bech32_decode,
    bech32_encode,
    segwit_address_decode,
    segwit_address_encode,
)
from .networks import NETWORKS, Network, get_network, networks_sharing_prefix

__all__ = [
    "AddressError",
    "address_to_script",
    "script_to_address",
    "p2pkh_script",
    "p2sh_script",
    "witness_script",
    "parse_witness_script",
    # Codec helpers, re-exported so callers need only this module.
    "Encoding",
    "base58_encode",
    "base58_decode",
    "base58check_encode",
    "base58check_decode",
    "bech32_encode",
    "bech32_decode",
    "segwit_address_encode",
    "segwit_address_decode",
]

_OP_0 = 0x00
_OP_1 = 0x51
_OP_16 = 0x60
_OP_DUP = 0x76
_OP_HASH160 = 0xA9
_OP_EQUAL = 0x87
_OP_EQUALVERIFY = 0x88
_OP_CHECKSIG = 0xAC


class AddressError(ValueError):
    """An address that is malformed or belongs to a different network."""


def p2pkh_script(pubkey_hash: bytes) -> bytes:
    """OP_DUP OP_HASH160 <20 bytes> OP_EQUALVERIFY OP_CHECKSIG."""
    if len(pubkey_hash) != 20:
        raise ValueError(f"P2PKH hash must be 20 bytes, got {len(pubkey_hash)}")
    return bytes((_OP_DUP, _OP_HASH160, 20)) + pubkey_hash + bytes((_OP_EQUALVERIFY, _OP_CHECKSIG))


def p2sh_script(script_hash: bytes) -> bytes:
    """OP_HASH160 <20 bytes> OP_EQUAL."""
    if len(script_hash) != 20:
        raise ValueError(f"P2SH hash must be 20 bytes, got {len(script_hash)}")
    return bytes((_OP_HASH160, 20)) + script_hash + bytes((_OP_EQUAL,))


def witness_script(version: int, program: bytes) -> bytes:
    """Segwit scriptPubKey: OP_0 or OP_1..OP_16, then a direct push of the program."""
    if not 0 <= version <= 16:
        raise ValueError(f"invalid witness version {version}")
    if not 2 <= len(program) <= 40:
        raise ValueError(f"invalid witness program length {len(program)}")
    opcode = _OP_0 if version == 0 else _OP_1 + version - 1
    return bytes((opcode, len(program))) + program


def parse_witness_script(script: bytes) -> tuple[int, bytes] | None:
    """(version, program) if script is a witness output script (BIP141 pattern), else None."""
    if not 4 <= len(script) <= 42 or script[1] != len(script) - 2:
        return None
    if script[0] == _OP_0:
        return 0, bytes(script[2:])
    if _OP_1 <= script[0] <= _OP_16:
        return script[0] - _OP_1 + 1, bytes(script[2:])
    return None


def _as_network(network: Network | str) -> Network:
    return network if isinstance(network, Network) else get_network(network)


def _accepted(net: Network) -> list[Network]:
    return [NETWORKS[name] for name in net.accepted_names()]


def _names(nets: list[Network]) -> str:
    return "/".join(n.name for n in nets)


def _known_hrps() -> list[str]:
    return sorted({n.bech32_hrp for n in NETWORKS.values()})


def address_to_script(address: str, network: Network | str) -> bytes:
    """scriptPubKey paying address, or AddressError saying what is wrong with it."""
    net = _as_network(network)
    if not isinstance(address, str) or not address:
        raise AddressError(f"address must be a non-empty string, got {address!r}")
    # Base58 strings may contain '1' too and may begin like an upper-case HRP
    # ("RB1..." on bcoin regtest), so a string with a valid base58check checksum is
    # base58; otherwise one of our HRPs in the two spellings bech32 allows (all lower
    # or all upper case) takes the bech32 path and its diagnosis.
    try:
        payload = base58check_decode(address)
    except Base58Error as b58_err:
        if any(address.startswith((hrp + "1", hrp.upper() + "1")) for hrp in _known_hrps()):
            return _segwit_to_script(address, net)
        try:
            hrp, _, _ = bech32_decode(address)
        except Bech32Error as b32_err:
            if any(address.lower().startswith(known + "1") for known in _known_hrps()):
                raise AddressError(f"address {address!r}: {b32_err}") from None
            raise AddressError(f"address {address!r} is not valid: {b58_err}") from None
        known = ", ".join(_known_hrps())
        raise AddressError(
            f"address {address!r} has unknown bech32 prefix {hrp!r} (known: {known})"
        ) from None
    return _base58_payload_to_script(address, payload, net)


def _segwit_to_script(address: str, net: Network) -> bytes:
    try:
        hrp, version, program = segwit_address_decode(address)
    except Bech32Error as e:
        raise AddressError(f"address {address!r}: {e}") from None
    accepted = _accepted(net)
    if hrp not in {n.bech32_hrp for n in accepted}:
        owners = networks_sharing_prefix(hrp=hrp)
        raise AddressError(
            f"address {address!r} is for {_names(owners)}, this node is {net.name}"
        )
    return witness_script(version, program)


def _base58_payload_to_script(address: str, payload: bytes, net: Network) -> bytes:
    if len(payload) != 21:
        raise AddressError(
            f"address {address!r}: base58 payload is {len(payload)} bytes, expected 21"
        )
    version, body = payload[0], payload[1:]
    for candidate in _accepted(net):
        if version == candidate.p2pkh_version:
            return p2pkh_script(body)
        if version == candidate.p2sh_version:
            return p2sh_script(body)
    kinds = []
    for other in NETWORKS.values():
        if version == other.p2pkh_version:
            kinds.append((other, "P2PKH"))
        elif version == other.p2sh_version:
            kinds.append((other, "P2SH"))
    expected = (
        f"expected {net.name} (P2PKH 0x{net.p2pkh_version:02x}, P2SH 0x{net.p2sh_version:02x})"
    )
    if not kinds:
        raise AddressError(
            f"address {address!r}: unknown base58 version 0x{version:02x}, {expected}"
        )
    owners = "/".join(n.name for n, _ in kinds)
    raise AddressError(
        f"address {address!r}: base58 version 0x{version:02x} is {owners} {kinds[0][1]}, {expected}"
    )


def script_to_address(script: bytes, network: Network | str) -> str | None:
    """Address for a standard P2PKH/P2SH/witness scriptPubKey on network, else None."""
    net = _as_network(network)
    script = bytes(script)
    if (
        len(script) == 25
        and script[:3] == bytes((_OP_DUP, _OP_HASH160, 20))
        and script[23:] == bytes((_OP_EQUALVERIFY, _OP_CHECKSIG))
    ):
        return base58check_encode(bytes((net.p2pkh_version,)) + script[3:23])
    if len(script) == 23 and script[:2] == bytes((_OP_HASH160, 20)) and script[22] == _OP_EQUAL:
        return base58check_encode(bytes((net.p2sh_version,)) + script[2:22])
    parsed = parse_witness_script(script)
    if parsed is None:
        return None
    version, program = parsed
    if version == 0 and len(program) not in (20, 32):
        return None
    return segwit_address_encode(net.bech32_hrp, version, program)
