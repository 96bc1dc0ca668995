"""Signet (BIP325) with challenge OP_TRUE: templates -> jobs -> blocks, refusal of other
challenges, the getblocktemplate rules, and the signet solution parser on a real block.

The real data is signet block 31500 (tests/data, electrumx): its two transactions, its
coinbase value and its witness commitment make the template a signet node with
-signetchallenge=51 would send for the same mempool (Core's getblocktemplate shape; the
challenge and the rules differ from the public signet's only in signet_challenge). Its
coinbase also carries a real signet solution (the public signet's signature), which the
parser must read back.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

import kernels
from miner.chain.address import address_to_script, script_to_address
from miner.chain.block import Block
from miner.chain.coinbase import find_witness_commitment, push_data
from miner.chain.encoding import DecodeError, compact_size
from miner.chain.networks import DEFAULT_SIGNET_CHALLENGE_HEX, get_network
from miner.chain.tx import TxOut
from miner.config import Config, ConfigError
from miner.modes.solo import SoloMiner
from miner.metrics import Metrics
from miner.node.rpc import NodeRPC
from miner.work.gbt import GBT_PARAMS, GBTSettings, GBTWorkSource, gbt_params
from miner.work.job import Solution
from miner.work.journal import Journal
from miner.work.rules import (
    SIGNET_HEADER,
    SignetChallengeError,
    op_true_signet_problems,
    parse_signet_solution,
    require_op_true_challenge,
    signet_solution,
)
from miner.work.submit import BlockSubmitter
from miner.work.template import TemplateError, UnsupportedSignetChallenge

from .fake_core import ChainTip, FakeCoreNode, TemplateContent
from .support import PAYOUT_SCRIPT, PROPERTY, job_for, load_json, tx_entry

SIGNET = get_network("signet")
VECTOR = load_json("bitcoin_signet_31500.json")
REAL_BLOCK = Block.from_bytes(bytes.fromhex(VECTOR["block"]))
REAL_COINBASE = REAL_BLOCK.transactions[0]
OP_TRUE = "51"
# A 1-of-1 bare multisig challenge (OP_1 <33-byte key> OP_1 OP_CHECKMULTISIG): needs a signature.
ONE_OF_ONE = "5121" + DEFAULT_SIGNET_CHALLENGE_HEX[4:70] + "51ae"
REFUSAL = "needs a block signature; gridminer mines only OP_TRUE (-signetchallenge=51) signets"


def signet_template(challenge: str | None = OP_TRUE) -> dict:
    """Core's getblocktemplate on a signet at height 31500 with block 31500's transactions."""
    commitment = find_witness_commitment(REAL_COINBASE)
    t = {
        "capabilities": ["proposal"], "version": REAL_BLOCK.header.version,
        "rules": ["csv", "!segwit", "taproot", "!signet"], "vbavailable": {}, "vbrequired": 0,
        "previousblockhash": VECTOR["previousblockhash"],
        "transactions": [tx_entry(tx) for tx in REAL_BLOCK.transactions[1:]],
        "coinbaseaux": {}, "coinbasevalue": sum(o.value_sats for o in REAL_COINBASE.outputs),
        "longpollid": VECTOR["previousblockhash"] + "3", "mintime": VECTOR["time"] - 3000,
        "mutable": ["time", "transactions", "prevblock"], "noncerange": "00000000ffffffff",
        "sigoplimit": 80000, "sizelimit": 4000000, "weightlimit": 4000000,
        "curtime": VECTOR["time"], "bits": VECTOR["bits"], "height": VECTOR["height"],
        "default_witness_commitment": "6a24aa21a9ed" + commitment.hex(),
    }
    if challenge is not None:
        t["signet_challenge"] = challenge
    return t


def mine(job) -> Block:
    """A block meeting the job's real signet target, found by the project's kernel."""
    extranonce = bytes(range(job.extranonce_size))
    header76 = job.header76(extranonce)
    chunk = 1 << 22  # search() scans its whole range: stop at the first chunk with a hit
    for start in range(0, 1 << 32, chunk):
        nonces = kernels.search(header76, job.target, start, chunk)
        if nonces:
            return job.block(Solution(job.job_id, extranonce, job.ntime, nonces[0], job.version))
    raise AssertionError("no nonce in 2**32: signet difficulty ~0.003 expects a hit in ~12M")


# -- the getblocktemplate request ----------------------------------------------------------------


@pytest.mark.parametrize(("name", "rules"), [
    ("signet", ["segwit", "signet"]), ("testnet4", ["segwit"]), ("testnet", ["segwit"]),
    ("mainnet", ["segwit"]), ("regtest", ["segwit"]), ("bcoin-regtest", ["segwit"]),
])
def test_gbt_rules_depend_on_the_chain(name, rules):
    assert gbt_params(get_network(name)) == {"rules": rules}
    assert gbt_params(None) == GBT_PARAMS == {"rules": ["segwit"]}


# -- template -> job -> block with challenge OP_TRUE ------------------------------------------------


def test_op_true_template_makes_a_valid_block_with_only_the_witness_commitment():
    template = signet_template()
    job = job_for(template, network=SIGNET)
    block = mine(job)
    assert block.check(check_pow=True) == []
    assert block.header.bits == 0x1E015DED and block.header.prev_hash_internal == REAL_BLOCK.header.prev_hash_internal
    assert block.transactions[1:] == REAL_BLOCK.transactions[1:]
    coinbase = block.transactions[0]
    # The commitment BIP325 requires is there (the same as the real block's for the same
    # transactions), with Core's zero reserved value; no signet solution push at all.
    assert find_witness_commitment(coinbase) == find_witness_commitment(REAL_COINBASE)
    assert coinbase.witnesses == ((bytes(32),),)
    assert signet_solution(coinbase) is None
    assert op_true_signet_problems(block) == []
    assert sum(o.value_sats for o in coinbase.outputs) == template["coinbasevalue"]
    assert Block.from_bytes(block.serialize()) == block


def test_op_true_template_without_transactions_still_gets_the_commitment():
    template = signet_template()
    template.update(transactions=[], coinbasevalue=5_000_000_000)
    template["default_witness_commitment"] = \
        "6a24aa21a9ede2f61c3f71d1defd3fa999dfa36953755c690689799962b48bebd836974e8cf9"
    block = mine(job_for(template, network=SIGNET))
    assert block.check(check_pow=True) == []
    assert find_witness_commitment(block.transactions[0]) is not None
    assert op_true_signet_problems(block) == []


def test_network_argument_is_optional_for_a_signet_template():
    """The template alone says it is a signet ("!signet" + signet_challenge)."""
    assert job_for(signet_template()).coinbase.witness_commitment is not None


# -- refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("challenge", [DEFAULT_SIGNET_CHALLENGE_HEX, ONE_OF_ONE, "00", "5151"])
def test_other_challenges_are_refused(challenge):
    with pytest.raises(UnsupportedSignetChallenge) as e:
        job_for(signet_template(challenge), network=SIGNET)
    assert isinstance(e.value, TemplateError) and e.value.reason == "unsupported_rule"
    assert f"signet challenge {challenge}" in str(e.value) and REFUSAL in str(e.value)


def test_the_default_public_signet_is_named_in_the_refusal():
    with pytest.raises(SignetChallengeError, match=r"\(the default public signet\) " + REFUSAL.split(";")[0]):
        require_op_true_challenge(DEFAULT_SIGNET_CHALLENGE_HEX)
    require_op_true_challenge("51")  # and OP_TRUE passes


def test_a_signet_template_without_its_challenge_is_refused():
    with pytest.raises(UnsupportedSignetChallenge, match="no signet_challenge"):
        job_for(signet_template(challenge=None))
    # Known to be a signet from the node: even a template without "!signet" is checked.
    template = signet_template(challenge=None)
    template["rules"] = ["csv", "!segwit", "taproot"]
    with pytest.raises(UnsupportedSignetChallenge):
        job_for(template, network=SIGNET)


def test_a_signet_template_without_segwit_is_refused():
    template = signet_template()
    template["rules"] = ["csv", "!signet"]
    template["transactions"] = []
    with pytest.raises(TemplateError) as e:
        job_for(template, network=SIGNET)
    assert e.value.reason == "rules"


def test_a_long_challenge_is_shortened_in_the_message():
    with pytest.raises(SignetChallengeError) as e:
        require_op_true_challenge("00" * 500)
    assert len(str(e.value)) < 300 and "..." in str(e.value)


# -- the signet solution parser (signet.cpp FetchAndClearCommitmentSection) ------------------------


def test_real_signet_solution_is_read_back():
    """Block 31500 of the public signet: a 1-of-2 bare multisig, so the solution is a
    scriptSig OP_0 <DER signature + SIGHASH_ALL> and an empty witness."""
    solution = signet_solution(REAL_COINBASE)
    script_sig, stack = parse_signet_solution(solution)
    assert stack == ()
    assert script_sig[0] == 0x00 and script_sig[1] == len(script_sig) - 2
    signature = script_sig[2:]
    assert signature[0] == 0x30 and signature[1] == len(signature) - 3 and signature[-1] == 0x01
    # An OP_TRUE checker cannot judge a real signature and says so.
    assert op_true_signet_problems(REAL_BLOCK) == \
        ["signet solution is not empty: gridminer cannot evaluate it against OP_TRUE"]


def _with_commitment_script(block: Block, script: bytes) -> Block:
    coinbase = block.transactions[0]
    outputs = coinbase.outputs[:-1] + (TxOut(0, script),)
    return replace(block, transactions=(replace(coinbase, outputs=outputs), *block.transactions[1:]))


def test_an_empty_solution_push_is_accepted_and_a_bad_one_reported():
    block = mine(job_for(signet_template(), network=SIGNET))
    commitment_script = block.transactions[0].outputs[-1].script_pubkey
    empty = _with_commitment_script(block, commitment_script + push_data(SIGNET_HEADER + b"\x00\x00"))
    assert signet_solution(empty.transactions[0]) == b"\x00\x00"
    assert op_true_signet_problems(empty) == []
    trailing = _with_commitment_script(block, commitment_script + push_data(SIGNET_HEADER + b"\x00\x00\x00"))
    assert op_true_signet_problems(trailing)[0].startswith("bad-signet-blksig: signet solution does not parse")
    # The header alone, without data after it, is no solution (signet.cpp: "only counts
    # if it has the header _and_ some data").
    bare = _with_commitment_script(block, commitment_script + push_data(SIGNET_HEADER))
    assert signet_solution(bare.transactions[0]) is None


def test_a_block_without_the_witness_commitment_is_reported():
    block = mine(job_for(signet_template(), network=SIGNET))
    coinbase = block.transactions[0]
    stripped = replace(block, transactions=(replace(coinbase, outputs=coinbase.outputs[:-1], witnesses=()),
                                            *block.transactions[1:]))
    assert op_true_signet_problems(stripped) == \
        ["bad-signet-blksig: no witness commitment output (BIP325 needs one, even for OP_TRUE)"]


@PROPERTY
@given(script_sig=st.binary(max_size=300), stack=st.lists(st.binary(max_size=80), max_size=5))
def test_solution_round_trip(script_sig, stack):
    serialized = compact_size(len(script_sig)) + script_sig + compact_size(len(stack)) + \
        b"".join(compact_size(len(item)) + item for item in stack)
    assert parse_signet_solution(serialized) == (script_sig, tuple(stack))
    if serialized:
        with pytest.raises(DecodeError):
            parse_signet_solution(serialized[:-1] if stack or script_sig else b"")
        with pytest.raises(DecodeError):
            parse_signet_solution(serialized + b"\x00")


# -- against a Core-shaped signet node: GBTWorkSource and the controller's chain check ----------


def _fake_signet(challenge: str | None, *, in_info: bool = True) -> FakeCoreNode:
    tip = ChainTip(VECTOR["previousblockhash"], VECTOR["height"] - 1, VECTOR["time"] - 600,
                   VECTOR["time"] - 3000, int(VECTOR["bits"], 16))
    content = TemplateContent(transactions=signet_template()["transactions"],
                              coinbasevalue=signet_template()["coinbasevalue"],
                              default_witness_commitment=signet_template()["default_witness_commitment"],
                              version=REAL_BLOCK.header.version)
    return FakeCoreNode("signet", tip, content, lambda: VECTOR["time"], signet_challenge_hex=challenge,
                        challenge_in_blockchaininfo=in_info)


async def _run_source(node: FakeCoreNode, tmp_path, metrics: Metrics):
    rpc = NodeRPC(node.url, node.auth, timeout=10, metrics=metrics)
    with Journal(tmp_path / "j.jsonl") as journal:
        source = GBTWorkSource(rpc, BlockSubmitter(rpc, journal), GBTSettings(
            payout_script=PAYOUT_SCRIPT, poll_interval=3600, template_refresh=3600, longpoll=False), metrics)
        task = asyncio.create_task(source.run())
        try:
            done, _ = await asyncio.wait([task, asyncio.create_task(source.ready.wait())], timeout=10,
                                         return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                task.result()  # raises what run() raised
            return source
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            rpc.close()


def test_work_source_asks_signet_templates_with_the_signet_rule(tmp_path):
    with _fake_signet(OP_TRUE) as node:
        source = asyncio.run(_run_source(node, tmp_path, Metrics()))
    assert source.network is SIGNET
    job = source.current
    assert job is not None and job.height == VECTOR["height"] and job.coinbase.witness_commitment is not None
    requests = [params for method, params in node.calls if method == "getblocktemplate"]
    assert requests == [[{"rules": ["segwit", "signet"]}]]
    assert "getblockheader" not in node.methods()  # no header-time rules on signet


def test_work_source_stops_on_a_signet_that_needs_a_signature(tmp_path):
    metrics = Metrics()
    with _fake_signet(DEFAULT_SIGNET_CHALLENGE_HEX) as node:
        with pytest.raises(UnsupportedSignetChallenge, match="the default public signet"):
            asyncio.run(_run_source(node, tmp_path, metrics))
    assert metrics.registry.get_sample_value("gridminer_template_errors_total",
                                             {"reason": "unsupported_rule"}) == 1


def test_the_fake_node_refuses_a_request_without_the_signet_rule():
    """Core's behaviour, which the rules test above relies on."""
    with _fake_signet(OP_TRUE) as node:
        rpc = NodeRPC(node.url, node.auth, timeout=10)
        try:
            with pytest.raises(Exception, match="signet rule set"):
                rpc.call_sync("getblocktemplate", {"rules": ["segwit"]})
        finally:
            rpc.close()


@pytest.mark.parametrize("in_info", [True, False], ids=["getblockchaininfo", "template-only"])
def test_controller_refuses_the_default_signet_before_mining(in_info):
    address = script_to_address(PAYOUT_SCRIPT, SIGNET)
    with _fake_signet(DEFAULT_SIGNET_CHALLENGE_HEX, in_info=in_info) as node:
        rpc = NodeRPC(node.url, node.auth, timeout=10)
        try:
            with pytest.raises(ConfigError, match=REFUSAL.replace("(", r"\(").replace(")", r"\)")):
                asyncio.run(SoloMiner(Config(), out=io.StringIO())._payout_script(rpc, address))
        finally:
            rpc.close()
    # Without the field in getblockchaininfo (older Core) the challenge comes from a template.
    assert ("getblocktemplate" in node.methods()) == (not in_info)


def test_controller_accepts_an_op_true_signet():
    address = script_to_address(PAYOUT_SCRIPT, SIGNET)
    with _fake_signet(OP_TRUE, in_info=False) as node:
        rpc = NodeRPC(node.url, node.auth, timeout=10)
        try:
            script = asyncio.run(SoloMiner(Config(), out=io.StringIO())._payout_script(rpc, address))
        finally:
            rpc.close()
    assert script == PAYOUT_SCRIPT
    assert [p for m, p in node.calls if m == "getblocktemplate"] == [[{"rules": ["segwit", "signet"]}]]


# -- two real Bitcoin Core nodes on a private OP_TRUE signet ----------------------------------------

# 101 signet blocks recorded from Core (see tests/data/README.md), every coinbase paying a
# throwaway test key: block 1's coinbase is spendable on top of them, so a mempool
# transaction costs no 100 blocks of signet proof of work (~4.8 million hashes each).
FUNDING_CHAIN = load_json("signet_op_true_101.json")


@pytest.fixture
def funded_signet():
    """Two connected SignetNodes with the recorded chain and a wallet that owns its coinbases."""
    from miner.testing import SignetNode
    from tests.conftest import require_peer

    require_peer("bitcoind")
    with SignetNode() as a, SignetNode() as b:
        a.connect(b)
        for raw in FUNDING_CHAIN["blocks"]:
            assert a.call("submitblock", raw) is None
        b.wait_for_tip(FUNDING_CHAIN["tip_hash"], timeout=120)
        descriptor = FUNDING_CHAIN["descriptor"]
        checksum = a.call("getdescriptorinfo", descriptor)["checksum"]
        [imported] = a.wallet_call("importdescriptors", [{"desc": f"{descriptor}#{checksum}", "timestamp": 0}])
        assert imported["success"], imported
        yield a, b


def test_core_signet_answers_templates_with_the_op_true_challenge(funded_signet):
    a, b = funded_signet
    template = a.call("getblocktemplate", {"rules": ["segwit", "signet"]})
    assert template["signet_challenge"] == OP_TRUE and "!signet" in template["rules"]
    assert template["height"] == FUNDING_CHAIN["height"] + 1 and template["bits"] == "1e0377ae"
    assert template["previousblockhash"] == FUNDING_CHAIN["tip_hash"] == b.call("getbestblockhash")


def test_miner_run_mines_signet_blocks_core_accepts_with_mempool_transactions(funded_signet, tmp_path):
    """`miner run` against Core on an OP_TRUE signet: both nodes take its blocks, the first
    carries the wallet's spend (a segwit one), every coinbase pays our address."""
    import subprocess
    import sys

    a, b = funded_signet
    payout = a.new_address("bech32")
    txid = a.wallet_call("sendtoaddress", a.new_address("bech32"), 1.5)
    a.wait_for_mempool(txid)
    cmd = [sys.executable, "-m", "miner", "run", "--node", a.rpc_url, "--rpc-cookie", str(a.auth.path),
           "--zmq", a.zmq_url, "--address", payout, "--journal", str(tmp_path / "found.jsonl"),
           "--threads", "2", "--blocks", "2", "--stratum", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=600)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"miner run did not mine 2 signet blocks in 600 s:\n"
                             f"{(e.stderr or b'').decode()[-3000:]}") from None
    assert done.returncode == 0, done.stderr.decode()[-3000:]

    height = FUNDING_CHAIN["height"]
    assert a.call("getblockcount") >= height + 2
    tip = a.call("getbestblockhash")
    b.wait_for_tip(tip)  # relayed to the other node, which validated it on its own
    ours = [a.call("getblock", a.call("getblockhash", h), 2) for h in (height + 1, height + 2)]
    assert ours[0]["previousblockhash"] == FUNDING_CHAIN["tip_hash"]
    assert txid in [tx["txid"] for tx in ours[0]["tx"]]
    spend = next(tx for tx in ours[0]["tx"] if tx["txid"] == txid)
    assert spend["hash"] != spend["txid"]  # a witness spend
    payout_script = address_to_script(payout, SIGNET).hex()
    for block in ours:
        assert block["bits"] == "1e0377ae"
        coinbase = block["tx"][0]
        assert coinbase["vout"][0]["scriptPubKey"]["hex"] == payout_script
        commitment = [o for o in coinbase["vout"] if o["scriptPubKey"]["hex"].startswith("6a24aa21a9ed")]
        assert len(commitment) == 1  # BIP325: every signet block commits, with no solution for OP_TRUE
        assert b.call("getblockheader", block["hash"])["confirmations"] >= 1
    assert a.wallet_call("gettransaction", txid)["confirmations"] >= 1
