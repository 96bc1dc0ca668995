"""Network rules a miner must honour that getblocktemplate states only implicitly. Pure.

Header time and bits (testnet3, testnet4; Core's pow.cpp GetNextWorkRequired and
validation.cpp ContextualCheckBlockHeader; BIP94 "Specification" 1 and 3):

  * 20-minute rule (fPowAllowMinDifficultyBlocks), every block except the first of a
    difficulty period: the required bits are a function of the block's own time.
        ntime >  prev_time + 2 * spacing  ->  bits MUST be the pow limit (0x1d00ffff)
        ntime <= prev_time + 2 * spacing  ->  bits MUST be the last non-minimum bits
    Core rejects anything else as "bad-diffbits". The node picks `bits` for its
    `curtime` (node/miner.cpp UpdateTime), so a template fixes which side of the
    threshold its blocks must stay on:
        min-difficulty template:  ntime >= threshold + 1   (never roll ntime back over it)
        normal template:          ntime <= threshold       (never roll ntime forward over it)
    unless the normal bits are the pow limit themselves, when both sides agree.
  * Timewarp rule (enforce_BIP94), first block of a period (height % 2016 == 0):
        ntime >= prev_time - MAX_TIMEWARP_S
    (its bits are the retarget result, whatever the time; BIP94 bases that retarget on
    the period's first block, which only the node computes.)

Signet (BIP325; Core's signet.cpp SignetTxs::Create / CheckSignetBlockSolution): a block
must carry a BIP141 witness commitment output, even without witness transactions ("require
a witness commitment"); the solution inside it (a push starting SIGNET_HEADER) may be
left out, which Core reads as an empty scriptSig and witness: "no signet solution --
allow this to support OP_TRUE as trivial block challenge". So with challenge 51 (OP_TRUE)
the block needs the commitment and nothing else; any other challenge needs a signature,
which gridminer does not make.
"""

from __future__ import annotations

from dataclasses import dataclass

from miner.chain.block import Block
from miner.chain.coinbase import WITNESS_COMMITMENT_HEADER
from miner.chain.encoding import ByteReader, DecodeError
from miner.chain.networks import DEFAULT_SIGNET_CHALLENGE_HEX, Network
from miner.chain.tx import Transaction

__all__ = [
    "MAX_TIMEWARP_S",
    "MIN_DIFFICULTY_GAP_SPACINGS",
    "OP_TRUE_CHALLENGE_HEX",
    "SIGNET_HEADER",
    "HeaderTimeBounds",
    "RuleError",
    "SignetChallengeError",
    "header_time_bounds",
    "is_first_block_of_period",
    "min_difficulty_applies",
    "min_difficulty_threshold",
    "needs_prev_time",
    "op_true_signet_problems",
    "parse_signet_solution",
    "require_op_true_challenge",
    "signet_solution",
]

# consensus/consensus.h MAX_TIMEWARP (seconds): how far the first block of a period may
# go back from its parent under BIP94.
MAX_TIMEWARP_S = 600
# "more than 2 * 10 minutes" (pow.cpp): the gap, in target spacings, after which a block
# must use the minimum difficulty.
MIN_DIFFICULTY_GAP_SPACINGS = 2
# The only signet challenge we can meet: OP_TRUE, i.e. bitcoind -signetchallenge=51.
OP_TRUE_CHALLENGE_HEX = "51"
# signet.cpp SIGNET_HEADER: marks the signet solution push in the commitment output.
SIGNET_HEADER = bytes.fromhex("ecc7daa2")
# BIP141: commitment outputs are at least 38 bytes (OP_RETURN, push 36, header, hash).
_MIN_COMMITMENT_SCRIPT = 38
# Longest challenge hex quoted in full in an error message.
_MAX_QUOTED_CHALLENGE_HEX = 160

_OP_PUSHDATA1, _OP_PUSHDATA2, _OP_PUSHDATA4 = 0x4C, 0x4D, 0x4E


class RuleError(ValueError):
    """A template whose bits and time break a network rule (the node would reject its blocks)."""


class SignetChallengeError(ValueError):
    """A signet whose block challenge gridminer cannot satisfy."""


@dataclass(frozen=True)
class HeaderTimeBounds:
    """Inclusive ntime bounds these rules put on a template's blocks (None: no bound)."""

    earliest: int | None = None
    latest: int | None = None
    # For a normal-difficulty template: the first ntime at which the minimum difficulty
    # applies instead, i.e. when a fresh template becomes worth fetching.
    min_difficulty_from: int | None = None


# -- header time and bits ---------------------------------------------------------------------


def is_first_block_of_period(network: Network, height: int) -> bool:
    """True for a retarget block (height % interval == 0): no 20-minute rule, BIP94 timewarp rule."""
    return height % network.difficulty_adjustment_interval == 0


def min_difficulty_applies(network: Network, height: int) -> bool:
    """Whether the 20-minute rule can set this block's bits.

    Not on networks without it, not on the first block of a period, and not where
    difficulty never changes (regtest: every block already has the pow-limit bits).
    """
    return (network.pow_allow_min_difficulty and not network.pow_no_retargeting
            and not is_first_block_of_period(network, height))


def needs_prev_time(network: Network) -> bool:
    """Whether header_time_bounds needs the previous block's time on this network."""
    return network.enforce_bip94 or (network.pow_allow_min_difficulty and not network.pow_no_retargeting)


def min_difficulty_threshold(network: Network, prev_time: int) -> int:
    """The last ntime at which the normal difficulty still applies (prev_time + 1200 s)."""
    return prev_time + MIN_DIFFICULTY_GAP_SPACINGS * network.target_spacing_s


def header_time_bounds(network: Network, *, height: int, bits: int, prev_time: int | None,
                       curtime: int) -> HeaderTimeBounds:
    """The ntime bounds for a template's blocks from the 20-minute and timewarp rules.

    `bits` and `curtime` are the template's: the node chose bits for curtime. Raises
    RuleError when they contradict each other (normal bits past the threshold).
    """
    if not needs_prev_time(network):
        return HeaderTimeBounds()
    if prev_time is None:
        raise ValueError(f"the previous block's time is needed for {network.name}'s header rules")
    earliest = None
    if network.enforce_bip94 and is_first_block_of_period(network, height):
        earliest = prev_time - MAX_TIMEWARP_S
    if not min_difficulty_applies(network, height):
        return HeaderTimeBounds(earliest=earliest)
    threshold = min_difficulty_threshold(network, prev_time)
    minimum_bits = network.pow_limit_bits
    if curtime > threshold:
        if bits != minimum_bits:
            raise RuleError(
                f"bits {bits:08x} at curtime {curtime}, {curtime - prev_time} s after the previous "
                f"block: {network.name} requires the minimum difficulty {minimum_bits:08x} there")
        # Conservative when the normal bits are the minimum too: rolling ntime back
        # below the threshold would then be valid, but curtime is already past it.
        return HeaderTimeBounds(earliest=threshold + 1)
    if bits == minimum_bits:
        return HeaderTimeBounds()  # the normal difficulty is the minimum: both sides agree
    return HeaderTimeBounds(latest=threshold, min_difficulty_from=threshold + 1)


# -- signet -----------------------------------------------------------------------------------


def require_op_true_challenge(challenge_hex: object) -> None:
    """Raise SignetChallengeError unless the signet's challenge is OP_TRUE (hex "51")."""
    if not isinstance(challenge_hex, str):
        raise SignetChallengeError(
            f"the signet node gave no signet_challenge (got {challenge_hex!r:.40}); gridminer mines "
            "only OP_TRUE (-signetchallenge=51) signets and must see the challenge first")
    if challenge_hex.lower() == OP_TRUE_CHALLENGE_HEX:
        return
    quoted = challenge_hex if len(challenge_hex) <= _MAX_QUOTED_CHALLENGE_HEX else \
        challenge_hex[:_MAX_QUOTED_CHALLENGE_HEX] + "..."
    which = " (the default public signet)" if challenge_hex.lower() == DEFAULT_SIGNET_CHALLENGE_HEX else ""
    raise SignetChallengeError(
        f"signet challenge {quoted}{which} needs a block signature; "
        f"gridminer mines only OP_TRUE (-signetchallenge=51) signets")


def _commitment_output_script(coinbase: Transaction) -> bytes | None:
    """The scriptPubKey of the witness commitment output (GetWitnessCommitmentIndex: the last match)."""
    for out in reversed(coinbase.outputs):
        script = out.script_pubkey
        if len(script) >= _MIN_COMMITMENT_SCRIPT and script.startswith(WITNESS_COMMITMENT_HEADER):
            return script
    return None


def _pushes(script: bytes):
    """The data of each push in script, in order, stopping at a truncated one (as CScript::GetOp)."""
    reader = ByteReader(script)
    try:
        while reader.remaining():
            op = reader.read_u8()
            if op < _OP_PUSHDATA1:
                size = op
            elif op == _OP_PUSHDATA1:
                size = reader.read_u8()
            elif op == _OP_PUSHDATA2:
                size = reader.read_u16_le()
            elif op == _OP_PUSHDATA4:
                size = reader.read_u32_le()
            else:
                continue  # an opcode without data
            yield reader.read(size)
    except DecodeError:
        return


def signet_solution(coinbase: Transaction) -> bytes | None:
    """The signet solution bytes in the coinbase's commitment output, or None if there is none.

    As FetchAndClearCommitmentSection: the first push longer than SIGNET_HEADER that
    starts with it; the solution is the rest of that push.
    """
    script = _commitment_output_script(coinbase)
    if script is None:
        return None
    for data in _pushes(script):
        if len(data) > len(SIGNET_HEADER) and data.startswith(SIGNET_HEADER):
            return data[len(SIGNET_HEADER):]
    return None


def parse_signet_solution(solution: bytes) -> tuple[bytes, tuple[bytes, ...]]:
    """(scriptSig, witness stack) from a signet solution; DecodeError on bad or trailing bytes."""
    reader = ByteReader(solution)
    script_sig = reader.read_var_bytes()
    stack = tuple(reader.read_var_bytes() for _ in range(reader.read_count()))
    reader.expect_end()  # signet.cpp: "extraneous data encountered"
    return script_sig, stack


def op_true_signet_problems(block: Block) -> list[str]:
    """Why an OP_TRUE signet would reject this block's signet solution; [] when it accepts it.

    Core verifies the solution against the challenge with VerifyScript; gridminer does
    not run scripts, so a non-empty solution is reported rather than judged.
    """
    if not block.transactions:
        return ["bad-signet-blksig: block has no coinbase"]
    coinbase = block.transactions[0]
    if _commitment_output_script(coinbase) is None:
        return ["bad-signet-blksig: no witness commitment output (BIP325 needs one, even for OP_TRUE)"]
    solution = signet_solution(coinbase)
    if solution is None:
        return []
    try:
        script_sig, stack = parse_signet_solution(solution)
    except DecodeError as e:
        return [f"bad-signet-blksig: signet solution does not parse: {e}"]
    if script_sig or stack:
        return ["signet solution is not empty: gridminer cannot evaluate it against OP_TRUE"]
    return []
