"""The pure-Python SHA-256 oracle against FIPS 180-4 examples and hashlib."""

import hashlib
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import sha256 as ref

# FIPS 180-4 / NIST CSRC example messages and digests.
NIST = [
    (b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    (b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    (b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
     "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
]


def test_nist_examples():
    for message, digest_hex in NIST:
        assert ref.sha256(message).hex() == digest_hex


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_sha256_and_sha256d_match_hashlib(message):
    assert ref.sha256(message) == hashlib.sha256(message).digest()
    assert ref.sha256d(message) == hashlib.sha256(hashlib.sha256(message).digest()).digest()


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=80, max_size=80))
def test_midstate_then_second_block_is_the_header_hash(header):
    # The second block of an 80-byte message: 16 bytes of header, then padding for 640 bits.
    second = header[64:] + b"\x80" + bytes(39) + struct.pack(">Q", 640)
    state = ref.compress(ref.midstate(header[:64]), second)
    assert ref.state_to_bytes(state) == hashlib.sha256(header).digest()


def test_compress_rejects_wrong_block_size():
    try:
        ref.compress(ref.IV, bytes(63))
    except ValueError as e:
        assert "64 bytes" in str(e)
    else:
        raise AssertionError("compress accepted a 63-byte block")
