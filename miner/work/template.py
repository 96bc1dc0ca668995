"""A getblocktemplate result turned into a Job: pure, and strict about every field it uses.

    template ──► height, version, bits (+ target), previousblockhash, curtime/mintime,
                 coinbasevalue, rules, transactions[] (data, txid, hash)
             ──► transactions parsed and their txid/wtxid recomputed from `data`
             ──► segwit active ("segwit" or "!segwit" in rules)?
                   yes: commitment = sha256d(witness_root(wtxids) || 32 zero bytes),
                        checked against default_witness_commitment when given
                   no:  no commitment, and no transaction may carry witness data
             ──► build_coinbase(...) + coinbase_merkle_branch(txids) ──► Job
             ──► network rules on ntime (work/rules.py), given the network and the
                 previous block's time: testnet's 20-minute rule caps or floors ntime
                 (Job.max_time / Job.min_time), BIP94's timewarp rule floors it
    "!signet" ──► only challenge 51 (OP_TRUE): the block then needs just the witness
                 commitment, which segwit templates always get here

A node is trusted for policy (which transactions, what fee) but not for arithmetic: a
template whose hashes, commitment or target disagree with its own data would have us
mine a block the node then rejects, so it is refused with a TemplateError whose
`.reason` is a short code for the `template_errors` metric.
"""

from __future__ import annotations

from typing import Any

from miner.chain.coinbase import MAX_HEIGHT, build_coinbase, witness_commitment_script
from miner.chain.coinbase import witness_commitment as compute_witness_commitment
from miner.chain.encoding import DecodeError
from miner.chain.hashes import internal_from_hex_display
from miner.chain.merkle import coinbase_merkle_branch, witness_root
from miner.chain.networks import Network
from miner.chain.target import bits_to_target
from miner.chain.tx import MAX_MONEY_SATS, Transaction
from miner.work.job import Job
from miner.work.rules import (
    HeaderTimeBounds,
    RuleError,
    SignetChallengeError,
    header_time_bounds,
    require_op_true_challenge,
)

__all__ = ["TemplateError", "TEMPLATE_ERROR_REASONS", "UnsupportedSignetChallenge", "job_from_template", "template_on_tip",
           "segwit_active"]

_U32_MAX = 0xFFFFFFFF

# Every TemplateError.reason, so the metric's label set is known and bounded.
TEMPLATE_ERROR_REASONS = frozenset({
    "malformed",             # not a JSON object
    "height",
    "version",
    "bits",
    "target_mismatch",       # `target` disagrees with `bits`
    "prevhash",
    "time",                  # curtime / mintime
    "coinbasevalue",
    "rules",
    "unsupported_rule",      # a "!rule" we do not implement (BIP9: must not mine then),
                             # or a signet challenge other than OP_TRUE
    "transaction",           # an entry that is not a well-formed non-coinbase transaction
    "txid_mismatch",
    "wtxid_mismatch",
    "duplicate_tx",
    "witness_without_segwit",
    "commitment",            # default_witness_commitment malformed or disagreeing
    "coinbase",              # the coinbase cannot be built from these values
})

# "!rule": the client must understand the rule to use the template (BIP9 / BIP145).
# Segwit we implement (the commitment). "!signet" we implement for the OP_TRUE challenge
# only (no solution needed, see work/rules.py); any other challenge needs a signature in
# the coinbase, which we cannot make, so such templates are refused rather than mined wrong.
_UNDERSTOOD_REQUIRED_RULES = frozenset({"segwit", "signet"})


class TemplateError(ValueError):
    """A template we must not mine on; `.reason` is one of TEMPLATE_ERROR_REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in TEMPLATE_ERROR_REASONS, reason
        super().__init__(f"getblocktemplate {message}")
        self.reason = reason


class UnsupportedSignetChallenge(TemplateError):
    """A signet template whose challenge needs a signature: nothing on this chain can be mined."""


def segwit_active(rules: list[str]) -> bool:
    """True when the template's rules say segwit is active (GBT lists it as "!segwit" or "segwit")."""
    return "segwit" in rules or "!segwit" in rules


def _int(template: dict, name: str, reason: str, lo: int, hi: int) -> int:
    if name not in template:
        raise TemplateError(reason, f"has no {name!r}")
    value = template[name]
    # bool is an int in Python and a float may be 1e300: neither is a JSON integer here.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TemplateError(reason, f"{name!r} must be an integer, got {value!r:.80}")
    if not lo <= value <= hi:
        raise TemplateError(reason, f"{name!r} out of range {lo}..{hi}: {value}")
    return value


def _str(template: dict, name: str, reason: str) -> str:
    if name not in template:
        raise TemplateError(reason, f"has no {name!r}")
    value = template[name]
    if not isinstance(value, str):
        raise TemplateError(reason, f"{name!r} must be a string, got {value!r:.80}")
    return value


def _hex_bytes(value: str, what: str, reason: str) -> bytes:
    # bytes.fromhex skips whitespace; the node never sends any, so refuse it too.
    if not value.isascii() or any(c.isspace() for c in value):
        raise TemplateError(reason, f"{what} is not hex: {value!r:.80}")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise TemplateError(reason, f"{what} is not hex: {value!r:.80}") from None


def _display_hash(value: object, what: str, reason: str) -> bytes:
    try:
        return internal_from_hex_display(value)  # type: ignore[arg-type]
    except ValueError:
        raise TemplateError(reason, f"{what} is not a 64-digit hex hash: {value!r:.80}") from None


def _parse_bits(template: dict) -> tuple[int, int]:
    text = _str(template, "bits", "bits")
    if len(text) != 8:
        raise TemplateError("bits", f"'bits' must be 8 hex digits, got {text!r:.80}")
    bits = int.from_bytes(_hex_bytes(text, "'bits'", "bits"), "big")
    try:
        target = bits_to_target(bits)
    except ValueError as e:
        raise TemplateError("bits", f"'bits' {text}: {e}") from None
    if target == 0:
        raise TemplateError("bits", f"'bits' {text} encodes a zero target")
    if "target" in template:
        given = template["target"]
        if not isinstance(given, str) or len(given) != 64:
            raise TemplateError("target_mismatch", f"'target' must be 64 hex digits, got {given!r:.80}")
        given_target = int.from_bytes(_hex_bytes(given, "'target'", "target_mismatch"), "big")
        if given_target != target:
            raise TemplateError(
                "target_mismatch", f"'target' {given} disagrees with 'bits' {text} ({target:064x})"
            )
    return bits, target


def _parse_rules(template: dict) -> list[str]:
    # BIP9 makes `rules` mandatory; a node that omits it predates segwit, so no rules.
    rules = template.get("rules", [])
    if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
        raise TemplateError("rules", f"'rules' must be a list of strings, got {rules!r:.80}")
    for rule in rules:
        if rule.startswith("!") and rule[1:] not in _UNDERSTOOD_REQUIRED_RULES:
            raise TemplateError(
                "unsupported_rule", f"requires rule {rule!r}, which this miner does not implement"
            )
    return rules


def _parse_transactions(template: dict) -> list[Transaction]:
    if "transactions" not in template:
        raise TemplateError("transaction", "has no 'transactions'")
    entries = template["transactions"]
    if not isinstance(entries, list):
        raise TemplateError("transaction", f"'transactions' must be a list, got {entries!r:.80}")
    txs: list[Transaction] = []
    seen: set[bytes] = set()
    for i, entry in enumerate(entries):
        where = f"transactions[{i}]"
        if not isinstance(entry, dict):
            raise TemplateError("transaction", f"{where} must be an object, got {entry!r:.80}")
        data = entry.get("data")
        if not isinstance(data, str):
            raise TemplateError("transaction", f"{where}.data must be a hex string, got {data!r:.80}")
        try:
            tx = Transaction.from_bytes(_hex_bytes(data, f"{where}.data", "transaction"))
        except DecodeError as e:
            raise TemplateError("transaction", f"{where}.data does not parse: {e}") from None
        if tx.is_coinbase():
            raise TemplateError("transaction", f"{where} is a coinbase")
        txid = tx.txid_internal()
        # Core sends both; BIP22-era nodes send only `hash`, which was the txid before
        # segwit, and is the wtxid now. Without witness data the two are the same.
        if "txid" in entry and _display_hash(entry["txid"], f"{where}.txid", "txid_mismatch") != txid:
            raise TemplateError(
                "txid_mismatch", f"{where}.txid {entry['txid']} != {tx.txid_hex_display()} from its data"
            )
        if "hash" in entry and _display_hash(entry["hash"], f"{where}.hash", "wtxid_mismatch") != tx.wtxid_internal():
            raise TemplateError(
                "wtxid_mismatch", f"{where}.hash {entry['hash']} != wtxid {tx.wtxid_hex_display()} from its data"
            )
        if txid in seen:
            raise TemplateError("duplicate_tx", f"{where} repeats txid {tx.txid_hex_display()}")
        seen.add(txid)
        txs.append(tx)
    return txs


def _witness_commitment(template: dict, txs: list[Transaction], segwit: bool) -> bytes | None:
    if not segwit:
        # bcoin 1.0.2 regtest sends default_witness_commitment while segwit is only
        # "defined" and rules is []: a commitment then is merely unused, but witness
        # data would make the block invalid.
        for i, tx in enumerate(txs):
            if tx.has_witness:
                raise TemplateError(
                    "witness_without_segwit",
                    f"transactions[{i}] has witness data but segwit is not active (rules {template.get('rules')!r})",
                )
        return None
    commitment = compute_witness_commitment(witness_root([tx.wtxid_internal() for tx in txs]))
    if "default_witness_commitment" in template:
        given = template["default_witness_commitment"]
        if not isinstance(given, str):
            raise TemplateError("commitment", f"'default_witness_commitment' must be hex, got {given!r:.80}")
        ours = witness_commitment_script(commitment)
        if _hex_bytes(given, "'default_witness_commitment'", "commitment") != ours:
            raise TemplateError(
                "commitment",
                f"'default_witness_commitment' {given:.100} != {ours.hex()} computed from the transactions",
            )
    return commitment


def _check_signet(template: dict, rules: list[str], network: Network | None) -> None:
    """Refuse a signet template unless its challenge is OP_TRUE and segwit is active."""
    # Core lists "!signet" and sends signet_challenge on every signet (rpc/mining.cpp).
    if "!signet" not in rules and "signet" not in rules and not (network and network.signet_blocks):
        return
    try:
        require_op_true_challenge(template.get("signet_challenge"))
    except SignetChallengeError as e:
        raise UnsupportedSignetChallenge("unsupported_rule", str(e)) from None
    if not segwit_active(rules):
        # signet.cpp refuses a block without a witness commitment, which only segwit gives.
        raise TemplateError("rules", f"signet template without segwit in its rules {rules!r:.80}")


def _time_bounds(template: dict, network: Network | None, height: int, bits: int,
                 prev_time: int | None, curtime: int) -> HeaderTimeBounds:
    if network is None:
        return HeaderTimeBounds()
    try:
        return header_time_bounds(network, height=height, bits=bits, prev_time=prev_time, curtime=curtime)
    except RuleError as e:
        raise TemplateError("bits", f"'bits' {template['bits']}: {e}") from None


def job_from_template(
    template: dict[str, Any],
    *,
    payout_script: bytes,
    job_id: str,
    extranonce_size: int = 8,
    tag: bytes = b"/gridminer/",
    clean: bool,
    ntime: int | None = None,
    network: Network | None = None,
    prev_time: int | None = None,
) -> Job:
    """The Job for a getblocktemplate result, paying the whole coinbasevalue to payout_script.

    With `network` the network's header-time rules apply (testnet3/testnet4 need
    `prev_time`, the previous block's header time); without it, none do.
    """
    # The caller's own arguments are configuration, not template data: plain errors.
    if not isinstance(payout_script, (bytes, bytearray)) or not payout_script:
        raise ValueError("payout_script must be a non-empty scriptPubKey")
    if ntime is not None and not 0 <= ntime <= _U32_MAX:
        raise ValueError(f"ntime out of uint32 range: {ntime}")
    if prev_time is not None and not 0 <= prev_time <= _U32_MAX:
        raise ValueError(f"prev_time out of uint32 range: {prev_time}")
    if not isinstance(template, dict):
        raise TemplateError("malformed", f"result must be a JSON object, got {type(template).__name__}")

    height = _int(template, "height", "height", 1, MAX_HEIGHT)
    # Core sends nVersion as a signed int32; BIP9 versions are positive, but fold a
    # negative one to the u32 the header and stratum use rather than refuse it.
    version = _int(template, "version", "version", -(1 << 31), _U32_MAX) & _U32_MAX
    bits, target = _parse_bits(template)
    prev_hash_internal = _display_hash(
        _str(template, "previousblockhash", "prevhash"), "'previousblockhash'", "prevhash"
    )
    curtime = _int(template, "curtime", "time", 0, _U32_MAX)
    mintime = _int(template, "mintime", "time", 0, _U32_MAX) if "mintime" in template else None
    coinbase_value = _int(template, "coinbasevalue", "coinbasevalue", 0, MAX_MONEY_SATS)
    rules = _parse_rules(template)
    _check_signet(template, rules, network)
    bounds = _time_bounds(template, network, height, bits, prev_time, curtime)
    txs = _parse_transactions(template)
    commitment = _witness_commitment(template, txs, segwit_active(rules))

    try:
        coinbase = build_coinbase(
            height, coinbase_value, bytes(payout_script), extranonce_size, tag,
            witness_commitment=commitment,
        )
    except ValueError as e:
        raise TemplateError("coinbase", f"coinbase cannot be built: {e}") from None

    # A header time below mintime (median time past + 1) is "time-too-old"; the rules'
    # bounds are the 20-minute and timewarp rules (Core < 29's mintime lacks the latter).
    floors = [t for t in (mintime, bounds.earliest) if t is not None]
    min_time = max(floors) if floors else None
    max_time = bounds.latest
    if min_time is not None and max_time is not None and min_time > max_time:
        raise TemplateError("time", f"no valid ntime: earliest {min_time} > latest {max_time}")
    job_ntime = curtime if ntime is None else ntime
    if min_time is not None:
        job_ntime = max(job_ntime, min_time)
    if max_time is not None:
        job_ntime = min(job_ntime, max_time)
    return Job(
        job_id=job_id,
        prev_hash_internal=prev_hash_internal,
        version=version,
        bits=bits,
        ntime=job_ntime,
        target=target,
        coinbase=coinbase,
        merkle_branch=tuple(coinbase_merkle_branch([tx.txid_internal() for tx in txs])),
        clean=clean,
        height=height,
        transactions=tuple(txs),
        min_time=min_time,
        max_time=max_time,
    )


def template_on_tip(template: dict[str, Any], *, tip_hex_display: str, tip_height: int, tip_time: int,
                    network: Network, now: int) -> dict[str, Any] | None:
    """A template for an empty block on `tip`, made from the node's last template.

    What to mine on a tip the node has no template for yet: our own block that it just
    accepted (the next template is a round trip away), or a tip bcoin reached by
    invalidateblock while it keeps serving its cached template on the dead one. Only
    where the next block's bits need no node (networks without retargeting: regtest);
    None elsewhere. The node's own template replaces it as soon as it comes.
    """
    if not network.pow_no_retargeting or network.signet_blocks or not isinstance(template, dict):
        return None
    if not all(k in template for k in ("version", "bits", "curtime")):
        return None
    height = tip_height + 1
    # After the tip's own time, so after the median of the last eleven (the tip is the
    # newest of them unless a node's clock was set back), and never before the node's.
    curtime = max(now, tip_time + 1, template["curtime"] if isinstance(template["curtime"], int) else 0)
    return {
        "version": template["version"],
        "previousblockhash": tip_hex_display,
        "height": height,
        "bits": template["bits"],
        "curtime": curtime,
        "coinbasevalue": network.block_subsidy_sats(height),
        "rules": template.get("rules", []),
        "transactions": [],
    }
