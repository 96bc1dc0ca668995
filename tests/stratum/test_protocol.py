"""Stratum v1 protocol: real vectors, byte-order rules, parsers round-trip and fail cleanly."""

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from miner.chain.hashes import internal_from_hex_display
from miner.chain.header import BlockHeader
from miner.chain.merkle import root_from_branch
from miner.stratum.protocol import (
    BIP320_VERSION_MASK, Configure, Notification, ProtocolError, Request, Response,
    StratumError, Submit, configure_result, encode, header_from_share,
    internal_from_stratum_prevhash, negotiate_version_rolling, notify, notify_params,
    parse_authorize, parse_configure, parse_extranonce_subscribe, parse_message, parse_notify,
    parse_set_version_mask, parse_submit, parse_subscribe, parse_subscribe_result, parse_suggest_difficulty,
    ping,
    pool_job_to_job, reconnect, set_difficulty, set_extranonce, set_version_mask, show_message,
    solution_from_share, stratum_prevhash_from_internal, submit_params, subscribe_result,
)

DATA = Path(__file__).resolve().parents[1] / "data"


def load(name):
    return json.loads((DATA / name).read_text())


# --- vectors -------------------------------------------------------------------------

def _job_951658():
    v = load("stratum_mainnet_951658.json")
    en1, en2_size = parse_subscribe_result(v["subscribe_result"])
    line = encode(Notification("mining.notify", v["notify"]["params"]))
    msg = parse_message(line)
    return v, en1, pool_job_to_job(parse_notify(msg.params), en1, en2_size)


def test_951658_notify_and_submit_rebuild_the_real_header():
    v, en1, job = _job_951658()
    sub = parse_message(json.dumps(v["submit"]).encode())
    assert isinstance(sub, Request) and sub.method == "mining.submit"
    submit = parse_submit(sub.params)
    header = header_from_share(job, en1, submit, BIP320_VERSION_MASK)
    assert header.to_bytes().hex() == v["header_hex"]
    assert header.hash_hex_display() == v["block_hash"]
    assert header.version_u32 == int(v["version_rolling"]["header_version"], 16)
    solution = solution_from_share(job, en1, submit, BIP320_VERSION_MASK)
    assert job.solution_header(solution) == header
    # and back: the Job re-notified gives the same params, the submit the same params
    assert notify_params(job, v["notify"]["params"][0], True) == v["notify"]["params"]
    assert submit_params(submit.worker, submit.job_id, submit.extranonce2, submit.ntime,
                         submit.nonce, submit.version_bits) == v["submit"]["params"]


def test_951658_version_rolling_needs_bit_2_in_the_job_version():
    v, en1, job = _job_951658()
    params = list(v["submit"]["params"])
    assert (0x253AC004 & ~BIP320_VERSION_MASK) & 0xFFFFFFFF == 0x20000004
    # From job version 20000000 the real version is unreachable: the extra bit is refused.
    base = pool_job_to_job(parse_notify(v["notify"]["params"][:5] + ["20000000"] + v["notify"]["params"][6:]),
                           en1, 8)
    params[5] = "053ac004"
    with pytest.raises(StratumError) as e:
        header_from_share(base, en1, parse_submit(params), BIP320_VERSION_MASK)
    assert e.value == StratumError.other("version bits outside mask")
    params[5] = "053ac000"
    h = header_from_share(base, en1, parse_submit(params), BIP320_VERSION_MASK)
    assert h.version_u32 == 0x253AC000 and h.hash_hex_display() != v["block_hash"]
    # Without an agreed mask, rolled bits are refused too.
    with pytest.raises(StratumError):
        header_from_share(job, en1, parse_submit(v["submit"]["params"]), 0)


def test_prevhash_word_swap_both_directions():
    v = load("stratum_mainnet_951658.json")
    display = v["previousblockhash_display"]
    sent = v["notify"]["params"][1]
    # the rule's second spelling: the display hex's eight 8-hex groups in reverse order
    groups = [display[i:i + 8] for i in range(0, 64, 8)]
    assert sent == "".join(reversed(groups))
    internal = internal_from_hex_display(display)
    assert stratum_prevhash_from_internal(internal) == sent
    assert internal_from_stratum_prevhash(sent) == internal
    assert BlockHeader.from_bytes(bytes.fromhex(v["header_hex"])).prev_hash_internal == internal


def test_block_100000_example_with_errata():
    v = load("stratum_troll_miner_block100000.json")
    params = v["notify_verbatim"]["params"]
    with pytest.raises(ProtocolError, match="nbits"):
        parse_notify(params)  # 4c86041b is bits in header byte order: a negative target
    fixed = list(params)
    fixed[6] = v["nbits_corrected"]
    as_sent = pool_job_to_job(parse_notify(fixed), bytes.fromhex(v["extranonce1"]), 2)
    submit = Submit("w", params[0], bytes.fromhex(v["extranonce2"]), int(params[7], 16), v["nonce"], None)
    assert header_from_share(as_sent, b"\x02", submit, 0).hash_hex_display() != v["block_hash"]
    fixed[1] = v["prevhash_stratum_corrected"]
    job = pool_job_to_job(parse_notify(fixed), bytes.fromhex(v["extranonce1"]), v["extranonce2_size"])
    header = header_from_share(job, bytes.fromhex(v["extranonce1"]), submit, 0)
    assert header.merkle_root_internal[::-1].hex() == v["merkle_root_display"]
    assert header.hash_hex_display() == v["block_hash"]


def test_slush_notify_coinbase_and_merkle_root():
    v = load("stratum_slush_notify_641820.json")
    sub = parse_message(v["subscribe_response"].encode())
    assert isinstance(sub, Response) and StratumError.from_json(sub.error) is None
    en1, size = parse_subscribe_result(sub.result)
    assert (en1.hex(), size) == ("2a6502002aa65f", 8)
    diff = parse_message(v["set_difficulty"].encode())
    assert diff.method == "mining.set_difficulty" and parse_suggest_difficulty(diff.params) == 8192
    msg = parse_message(v["notify"].encode())  # sent with id 0: a Request by shape
    assert msg.method == "mining.notify"
    pj = parse_notify(msg.params)
    assert (pj.version, pj.nbits, pj.ntime, pj.clean) == (0x20000000, 0x1710B4F8, 0x5F260659, True)
    job = pool_job_to_job(pj, b"\x00" + en1, size)
    extranonce = bytes.fromhex(v["extranonce_used_hex"])
    txid = job.coinbase.txid_internal(extranonce)
    assert txid.hex() == v["coinbase_txid_internal_hex"]
    assert root_from_branch(txid, pj.merkle_branch).hex() == v["merkle_root_internal_hex"]
    assert job.merkle_root_internal(extranonce).hex() == v["merkle_root_internal_hex"]


# --- messages and errors -------------------------------------------------------------

def test_message_kinds_and_encoding():
    assert parse_message(b'{"id":1,"method":"mining.subscribe","params":["cgminer/4.9"]}') == \
        Request(1, "mining.subscribe", ["cgminer/4.9"])
    assert parse_message(b'{"id":null,"method":"mining.notify","params":[]}') == Notification("mining.notify", [])
    assert parse_message(b'{"id":"a","method":"mining.extranonce.subscribe","params":null}') == \
        Request("a", "mining.extranonce.subscribe", [])
    r = parse_message(b'{"id":3,"result":null,"error":[23,"Low difficulty share",null]}')
    assert StratumError.from_json(r.error) == StratumError.low_difficulty()
    assert encode(Response(3, None, StratumError.duplicate())) == \
        b'{"id":3,"result":null,"error":[22,"Duplicate share",null]}\n'
    assert encode(ping(7)) == b'{"id":7,"method":"mining.ping","params":[]}\n'


@pytest.mark.parametrize("line, has_id", [
    (b"not json", False), (b"[1,2]", False), (b'{"id":5,"method":"x","params":{"a":1}}', True),
    (b'{"id":5,"method":7,"params":[]}', True), (b'{"id":[1],"method":"x"}', False),
    (b'{"id":5}', True), (b'{"id":1,"method":"x","params":[NaN]}', False), (b"\xff\xfe", False),
    (b"[" * 100000, False),
])
def test_bad_messages(line, has_id):
    with pytest.raises(ProtocolError) as e:
        parse_message(line)
    assert (e.value.id == 5) == has_id


def test_error_codes_and_shapes():
    assert [e.code for e in (StratumError.other("x"), StratumError.job_not_found(), StratumError.duplicate(),
                             StratumError.low_difficulty(), StratumError.unauthorized(),
                             StratumError.not_subscribed())] == [20, 21, 22, 23, 24, 25]
    assert StratumError.job_not_found().to_json() == [21, "Job not found", None]
    assert StratumError.from_json({"code": 24, "message": "Unauthorized worker"}) == StratumError.unauthorized()
    assert StratumError.from_json([21, "Stale", "tb"]).traceback == "tb"
    assert StratumError.from_json("boom").code == 20
    for bad in ([], {"message": "x"}, ["x", "y"], 5):
        with pytest.raises(ProtocolError):
            StratumError.from_json(bad)


def test_typed_parsers_examples():
    assert parse_subscribe([]).user_agent is None
    assert parse_subscribe(["bmminer/2.0", "deadbeef"]).session_id == "deadbeef"
    assert parse_authorize(["bc1q.worker"]).password == ""
    c = parse_configure([["version-rolling", "minimum-difficulty", "subscribe-extranonce"],
                         {"version-rolling.mask": "ffffffff", "version-rolling.min-bit-count": 2,
                          "minimum-difficulty.value": 2048}])
    assert negotiate_version_rolling(c) == 0x1FFFE000
    assert negotiate_version_rolling(Configure(["version-rolling"], {"version-rolling.mask": "00fff000"})) == 0x00FFE000
    # BIP310's example answer shape
    assert configure_result(0x1FFFE000, True, ["subscribe-extranonce"]) == {
        "version-rolling": True, "version-rolling.mask": "1fffe000", "minimum-difficulty": True,
        "subscribe-extranonce": False}
    assert parse_suggest_difficulty(["512"]) == 512.0 and parse_suggest_difficulty([0.5]) == 0.5
    for bad in ([], [0], ["-1"], ["nan"], ["inf"], [True], [None], [[1]], ["1e999"], [10**400]):
        with pytest.raises(StratumError):
            parse_suggest_difficulty(bad)
    assert parse_extranonce_subscribe([]) is True
    s = parse_submit(["w", "1", "00000001", "5f260659", "DEADBEEF"])
    assert (s.ntime, s.nonce, s.version_bits, s.extranonce2) == (0x5F260659, 0xDEADBEEF, None, b"\0\0\0\x01")
    for bad in (["w", "1", "0", "5f260659", "00000000"], ["w", "1", "00", "5f26065", "00000000"],
                ["w", "1", "00", "5f260659", "0x000000"], ["w", 1, "00", "5f260659", "00000000"],
                ["w", "1", "00", "5f260659", "00000000", "1fffe00"], ["w", "1", "00", "5f260659"]):
        with pytest.raises(StratumError):
            parse_submit(bad)


def test_builders():
    assert subscribe_result(b"\x01\x02\x03\x04", 8, "s1") == \
        [[["mining.set_difficulty", "s1"], ["mining.notify", "s1"]], "01020304", 8]
    assert set_difficulty(1024.0).params == [1024] and set_difficulty(0.5).params == [0.5]
    assert set_extranonce(b"\xab", 4) == Notification("mining.set_extranonce", ["ab", 4])
    assert reconnect("pool.example", 3333, 5).params == ["pool.example", 3333, 5]
    assert show_message("hi").method == "client.show_message"
    _, _, job = _job_951658()
    assert notify(job, "j", False).params[-1] is False


def test_extranonce2_length_is_checked():
    v, en1, job = _job_951658()
    params = list(v["submit"]["params"])
    params[2] = params[2][:-2]
    with pytest.raises(StratumError, match="extranonce2 must be 8 bytes"):
        header_from_share(job, en1, parse_submit(params), BIP320_VERSION_MASK)


# --- properties ----------------------------------------------------------------------

u32 = st.integers(0, 0xFFFFFFFF)
names = st.text(min_size=1, max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12)


@given(names, names, st.binary(max_size=16), u32, u32, st.none() | u32.map(lambda x: x & BIP320_VERSION_MASK),
       st.integers(0, 2**40))
def test_submit_roundtrip(worker, job_id, en2, ntime, nonce, vbits, msg_id):
    line = encode(Request(msg_id, "mining.submit", submit_params(worker, job_id, en2, ntime, nonce, vbits)))
    msg = parse_message(line)
    assert msg.id == msg_id
    assert parse_submit(msg.params) == Submit(worker, job_id, en2, ntime, nonce, vbits)


@given(st.binary(min_size=32, max_size=32), st.binary(max_size=200), st.binary(max_size=200),
       st.lists(st.binary(min_size=32, max_size=32), max_size=12), u32,
       st.integers(0x03000001, 0x1D7FFFFF), u32, st.booleans(), names,
       st.binary(max_size=8), st.integers(0, 8))
def test_notify_roundtrip(prev, cb1, cb2, branch, version, bits, ntime, clean, job_id, en1, en2_size):
    from miner.stratum.protocol import PoolJob
    pj = PoolJob(job_id, prev, cb1, cb2, tuple(branch), version, bits, ntime, clean)
    try:
        job = pool_job_to_job(pj, en1, en2_size)
    except ValueError:
        return  # bits with a negative/overflowing target: not a job
    line = encode(notify(job, job_id, clean))
    assert parse_notify(parse_message(line).params) == pj


@given(names, st.none() | names, st.floats(min_value=1e-8, max_value=1e15), st.booleans())
def test_request_param_roundtrips(worker, password, difficulty, as_string):
    assert parse_authorize(parse_message(encode(Request(1, "mining.authorize", [worker, password]))).params) \
        .worker == worker
    d = parse_message(encode(set_difficulty(difficulty))).params[0]
    sent = repr(d) if as_string else d
    assert math.isclose(parse_suggest_difficulty([sent]), difficulty)


@given(st.binary(max_size=300))
def test_garbage_bytes_only_protocol_error(line):
    try:
        parse_message(line)
    except ProtocolError:
        pass


@given(u32)
def test_set_version_mask_round_trip(mask):
    msg = parse_message(encode(set_version_mask(mask)))
    assert msg.method == "mining.set_version_mask" and parse_set_version_mask(msg.params) == mask


@settings(max_examples=300)
@given(json_values)
def test_garbage_params_only_defined_errors(params):
    for parser in (parse_subscribe, parse_authorize, parse_configure, parse_suggest_difficulty,
                   parse_submit, parse_extranonce_subscribe):
        try:
            parser(params)
        except StratumError as e:
            assert e.code == 20 and e.message
    for parser in (parse_notify, parse_subscribe_result, parse_set_version_mask, StratumError.from_json):
        try:
            parser(params)
        except ProtocolError:
            pass
    try:
        parse_message(json.dumps({"id": 1, "method": "m", "params": params}).encode())
    except ProtocolError:
        pass


@settings(max_examples=300)
@given(st.lists(json_values | st.text(alphabet="0123456789abcdefX", max_size=70), min_size=9, max_size=10))
def test_notify_garbage_names_field(params):
    try:
        parse_notify(params)
    except ProtocolError as e:
        assert str(e).startswith("notify ")
