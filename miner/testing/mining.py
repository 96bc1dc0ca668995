"""Mining regtest blocks with gridminer's own kernel, through getblocktemplate and submitblock.

    getblocktemplate ──► [+ mempool transactions the node's cached template lacks]
        ──► job_from_template (the solo miner's code) ──► kernels.scan finds a nonce
        ──► submitblock ──► null (accepted), else MiningError with the node's reason

Not generatetoaddress: the blocks are built and solved the way `miner run` builds and
solves them, so a test that uses them exercises the same coinbase, merkle and
witness-commitment code. On regtest half of all nonces meet the target, so a block
costs one template round trip and a few hashes (after the kernel's one-time load from
numba's cache).

Why mempool transactions are added by hand: nodes cache their template. bcoin 1.0.2
keeps it until the next block, or until a transaction arrives more than 10 s after it
was built; Bitcoin Core keeps it for 5 s of mempool changes. Right after a block
(mine() itself, or one found by a pool on the same node) the template is rebuilt and
complete; but when someone asked for a template since, a transaction sent a moment ago
would be left out. mine() promises that what is in the mempool when it is called goes
into the first block, so it appends the missing transactions itself, parents first,
within the template's weight limit, without claiming their fees (paying the miner less
than allowed is valid). A node that refuses the resulting block raises MiningError.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from kernels import scan as kscan
from miner.chain.address import AddressError, address_to_script
from miner.chain.tx import Transaction
from miner.node.regtest import RegtestNode
from miner.node.rpc import RPCError
from miner.work.gbt import GBT_PARAMS
from miner.work.job import Job, Solution
from miner.work.submit import result_from_answer
from miner.work.template import TemplateError, job_from_template

__all__ = ["MiningError", "MiningTimeout", "mine", "mine_until", "solve", "template_with_mempool"]

log = logging.getLogger(__name__)

# Coinbase tag of blocks mined for tests.
COINBASE_TAG = b"/gridminer-test/"
# Extranonce bytes in those coinbases (the solo miner's default).
EXTRANONCE_SIZE = 8
# Nonces one kernel call covers while solving (about 10 ms at CPU speed).
SOLVE_CHUNK = 1 << 16
# Block weight kept free for the coinbase and header when adding mempool transactions.
COINBASE_WEIGHT_RESERVE = 8000
# Job ids of the blocks mined here (they only show in logs and errors).
_ids = itertools.count(1)


class MiningError(RuntimeError):
    """A block could not be mined or the node refused it (the message has the node's reason)."""


class MiningTimeout(MiningError, TimeoutError):
    """mine_until: the predicate did not become true in time."""


def solve(job: Job, *, extranonce_size: int | None = None, deadline: float | None = None) -> Solution:
    """A Solution meeting job.target, found by the kernel (any target; regtest's takes a few hashes).

    Extranonces count up from zero; each gets the whole nonce space. MiningError when
    the deadline (time.monotonic()) passes first.
    """
    size = job.extranonce_size if extranonce_size is None else extranonce_size
    target_words = kscan.target_words(job.target)
    out = np.empty(1, dtype=np.uint32)
    for counter in range(1 << min(8 * size, 63)):
        extranonce = counter.to_bytes(size, "big")
        prepared = kscan.prepare(job.header76(extranonce))
        pos = 0
        while pos < kscan.NONCE_SPACE:
            hits, consumed = kscan.scan_chunk(prepared, target_words, pos,
                                              min(SOLVE_CHUNK, kscan.NONCE_SPACE - pos), out)
            if hits:
                return Solution(job.job_id, extranonce, job.ntime, hits[0], job.version)
            pos += consumed
            if deadline is not None and time.monotonic() > deadline:
                raise MiningError(f"no block found for job {job.job_id} before the deadline "
                                  f"(target {job.target:064x})")
    raise MiningError(f"extranonce space exhausted for job {job.job_id}")


def _entry_txid(entry: dict[str, Any]) -> str | None:
    txid = entry.get("txid", entry.get("hash"))
    return txid if isinstance(txid, str) else None


def _parents_first(txs: dict[str, Transaction]) -> list[Transaction]:
    """The transactions ordered so each comes after those of them it spends (Kahn's algorithm)."""
    parents = {txid: {i.prev_txid_internal[::-1].hex() for i in tx.inputs} & txs.keys()
               for txid, tx in txs.items()}
    ordered: list[Transaction] = []
    placed: set[str] = set()
    while len(placed) < len(txs):
        ready = [txid for txid in txs if txid not in placed and parents[txid] <= placed]
        if not ready:  # a cycle cannot happen among valid transactions; stop rather than loop
            break
        for txid in ready:
            placed.add(txid)
            ordered.append(txs[txid])
    return ordered


def template_with_mempool(node: RegtestNode, template: dict[str, Any]) -> dict[str, Any]:
    """The template plus mempool transactions it lacks (see the module doc); the same dict if none."""
    entries = template.get("transactions")
    if not isinstance(entries, list):
        return template  # job_from_template will say what is wrong with it
    present = {_entry_txid(e) for e in entries if isinstance(e, dict)}
    missing = [txid for txid in node.call("getrawmempool") if txid not in present]
    if not missing:
        return template
    txs: dict[str, Transaction] = {}
    for txid in missing:
        try:
            txs[txid] = Transaction.from_bytes(bytes.fromhex(node.call("getrawtransaction", txid)))
        except RPCError:
            continue  # it left the mempool (mined or replaced) since getrawmempool
    limit = template.get("weightlimit") or 4 * int(template.get("sizelimit") or 1_000_000)
    used = COINBASE_WEIGHT_RESERVE + sum(
        int(e["weight"]) if isinstance(e.get("weight"), int) else 4 * len(e.get("data", "")) // 2
        for e in entries if isinstance(e, dict))
    added = []
    for tx in _parents_first(txs):
        weight = tx.weight()
        if used + weight > limit:
            break  # a child must not come without its parent: stop at the first that does not fit
        used += weight
        added.append({"data": tx.serialize().hex(), "txid": tx.txid_hex_display(),
                      "hash": tx.wtxid_hex_display()})
    if not added:
        return template
    log.info("node's template lacks %d mempool transaction(s); adding %d", len(missing), len(added))
    extended = dict(template, transactions=[*entries, *added])
    # The node's commitment covers its own list; job_from_template computes the new one.
    extended.pop("default_witness_commitment", None)
    return extended


def _payout_script(node: RegtestNode, address: str) -> bytes:
    try:
        return address_to_script(address, node.network_name)
    except AddressError as e:
        raise ValueError(f"cannot mine to {address!r}: {e}") from None


def _job(template: dict[str, Any], payout_script: bytes) -> Job:
    try:
        return job_from_template(template, payout_script=payout_script, job_id=f"test-{next(_ids):x}",
                                 extranonce_size=EXTRANONCE_SIZE, tag=COINBASE_TAG, clean=True)
    except TemplateError as e:
        raise MiningError(f"the node's template cannot be mined ({e.reason}): {e}") from None


def _mine_one(node: RegtestNode, payout_script: bytes, deadline: float | None) -> str:
    template = template_with_mempool(node, node.call("getblocktemplate", GBT_PARAMS))
    return _solve_and_submit(node, _job(template, payout_script), deadline)


def _solve_and_submit(node: RegtestNode, job: Job, deadline: float | None) -> str:
    """Solve job, submit its block; the block hash, or MiningError with the node's answer."""
    block = job.block(solve(job, deadline=deadline))
    block_hash = block.hash_hex_display()
    try:
        result = result_from_answer(node.call("submitblock", block.serialize().hex()))
    except RPCError as e:
        raise MiningError(f"submitblock {block_hash} at height {job.height} failed: {e}") from None
    if result != "accepted":
        raise MiningError(f"the node refused block {block_hash} at height {job.height}: {result}")
    return block_hash


def _start(node: RegtestNode, address: str | None) -> tuple[bytes, bool]:
    """(payout script, whether the node's wallet is paid and must be waited for)."""
    if address is None:
        # Legacy: bcoin's mempool refuses witness spends until segwit activates (height
        # 432), so bech32 coinbases could not be spent by the wallet before then.
        return _payout_script(node, node.new_address("legacy")), True
    return _payout_script(node, address), node.owns_address(address)


def mine(node: RegtestNode, n: int, address: str | None = None) -> list[str]:
    """Mine n blocks on node with gridminer's kernel; their hashes (RPC byte order), oldest first.

    address: where the coinbases pay (any regtest address, Core's bcrt1... or bcoin's
    rb1...); default a new legacy address of the node's wallet. Every transaction in the
    mempool at the call goes into the first block (if it fits and the node accepts it).
    When the coinbases pay the node's wallet, returns once the wallet has seen them.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    if n == 0:
        return []
    script, wallet_paid = _start(node, address)
    hashes = [_mine_one(node, script, None) for _ in range(n)]
    if wallet_paid:
        node.wait_for_wallet()
    return hashes


def mine_until(node: RegtestNode, predicate: Callable[[], object], timeout: float = 60.0, *,
               address: str | None = None, max_blocks: int | None = None) -> list[str]:
    """Mine one block at a time until predicate() is true; the hashes mined (none if it already was).

    MiningTimeout when timeout seconds pass or max_blocks are mined first.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0, got {timeout!r}")
    deadline = time.monotonic() + timeout
    hashes: list[str] = []
    if predicate():
        return hashes
    script, wallet_paid = _start(node, address)
    while True:
        if max_blocks is not None and len(hashes) >= max_blocks:
            raise MiningTimeout(f"predicate still false after {len(hashes)} blocks (max_blocks)")
        if time.monotonic() > deadline:
            raise MiningTimeout(f"predicate still false after {timeout:g} s ({len(hashes)} blocks mined)")
        hashes.append(_mine_one(node, script, deadline))
        if wallet_paid:
            node.wait_for_wallet()  # the predicate may well ask the wallet
        if predicate():
            return hashes
