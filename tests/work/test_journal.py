"""The found-block journal: fsync before returning, replay, torn lines, pending across restarts."""

from __future__ import annotations

import errno
import json
import logging
import os
import stat

import pytest

from miner.work import journal as journal_module
from miner.work.journal import Journal, JournalError

from .support import bcoin_template, fake_hash, job_for, solve, template_on


def found_block(extranonce_byte: int = 0, prev: str | None = None):
    """(block bytes, hash, prev hash, job) of a valid regtest block."""
    job = job_for(bcoin_template() if prev is None else template_on(prev), job_id=f"j{extranonce_byte}")
    block = job.block(solve(job, bytes([extranonce_byte]) * 8))
    return block.serialize(), block.hash_hex_display(), job.prev_hash_hex_display, job


def record(j: Journal, extranonce_byte: int = 0, prev: str | None = None):
    raw, block_hash, prev_hash, job = found_block(extranonce_byte, prev)
    return j.record_found(raw, block_hash_hex_display=block_hash, prev_hash_hex_display=prev_hash,
                          height=job.height, job_id=job.job_id)


def test_record_found_is_on_disk_and_fsynced_before_it_returns(tmp_path, monkeypatch):
    path = tmp_path / "blocks.jsonl"
    syncs = []
    real_fsync = os.fsync

    def spy_fsync(fd):
        mode = os.fstat(fd).st_mode
        content = path.read_bytes() if path.exists() else b""
        syncs.append(("dir" if stat.S_ISDIR(mode) else "file", content))
        real_fsync(fd)

    monkeypatch.setattr(journal_module.os, "fsync", spy_fsync)
    j = Journal(path)
    # Creating the file: the file and its directory entry are both made durable.
    assert [kind for kind, _ in syncs] == ["file", "dir"]
    syncs.clear()

    raw, block_hash, prev_hash, job = found_block()
    entry = j.record_found(raw, block_hash_hex_display=block_hash, prev_hash_hex_display=prev_hash,
                           height=1, job_id="j0")
    # One fsync of the file, and by then the whole line was already written to it.
    assert [kind for kind, _ in syncs] == ["file"]
    line = json.loads(syncs[0][1].decode().splitlines()[-1])
    assert line["type"] == "found" and line["hash"] == block_hash
    assert bytes.fromhex(line["block"]) == raw
    assert entry.block == raw and entry.height == 1 and not entry.final
    syncs.clear()

    j.record_result(block_hash, "accepted", final=True)
    assert [kind for kind, _ in syncs] == ["file"]
    j.close()


def test_replay_after_restart(tmp_path):
    path = tmp_path / "blocks.jsonl"
    with Journal(path, clock=lambda: 1234.5) as j:
        a = record(j, 1)
        b = record(j, 2)
        c = record(j, 3)
        j.record_result(a.block_hash_hex_display, "unavailable", final=False)
        j.record_result(a.block_hash_hex_display, "accepted", final=True)
        j.record_result(b.block_hash_hex_display, "unavailable", final=False)
        before = j.entries()
        assert [e.block_hash_hex_display for e in j.pending()] == [b.block_hash_hex_display,
                                                                    c.block_hash_hex_display]
    with Journal(path) as j:
        assert j.entries() == before
        assert [e.block_hash_hex_display for e in j.pending()] == [b.block_hash_hex_display,
                                                                    c.block_hash_hex_display]
        got = j.get(a.block_hash_hex_display)
        assert got.results == ("unavailable", "accepted") and got.final_result == "accepted"
        assert got.found_at == 1234.5 and got.job_id == "j1"
        assert j.get(b.block_hash_hex_display).last_result == "unavailable"
        assert j.get(c.block_hash_hex_display).last_result is None


def test_torn_last_line_is_dropped_and_logged(tmp_path, caplog):
    path = tmp_path / "blocks.jsonl"
    with Journal(path) as j:
        a = record(j, 1)
    intact = path.read_bytes()
    with open(path, "ab") as f:
        f.write(b'{"v":1,"type":"found","hash":"00ab')  # a crash mid-append
    with caplog.at_level(logging.WARNING, logger="miner.work.journal"):
        with Journal(path) as j:
            assert [e.block_hash_hex_display for e in j.entries()] == [a.block_hash_hex_display]
            assert path.read_bytes() == intact  # cut back to the last whole line
            b = record(j, 2)
    assert "torn line" in caplog.text
    with Journal(path) as j:
        assert [e.block_hash_hex_display for e in j.pending()] == [a.block_hash_hex_display,
                                                                    b.block_hash_hex_display]


def test_a_complete_last_record_missing_only_its_newline_is_kept(tmp_path):
    path = tmp_path / "blocks.jsonl"
    with Journal(path) as j:
        a = record(j, 1)
        b = record(j, 2)
    path.write_bytes(path.read_bytes()[:-1])  # the newline of b's line never made it
    with Journal(path) as j:
        assert [e.block_hash_hex_display for e in j.entries()] == [a.block_hash_hex_display,
                                                                    b.block_hash_hex_display]
        j.record_result(b.block_hash_hex_display, "accepted", final=True)
    with Journal(path) as j:
        assert j.get(b.block_hash_hex_display).final_result == "accepted"


@pytest.mark.parametrize("garbage", [b"\x00" * 40, b"not json", b'{"v":99,"type":"found"}',
                                     b'{"v":1,"type":"found","hash":"00"}',
                                     b'{"v":1,"type":"result","hash":"' + b"11" * 32 + b'","result":"x","final":true}',
                                     b'{"v":1,"type":"mystery"}', b"[]", b"\xff\xfe"])
def test_an_unreadable_line_in_the_middle_is_skipped_not_fatal(tmp_path, caplog, garbage):
    path = tmp_path / "blocks.jsonl"
    with Journal(path) as j:
        a = record(j, 1)
    with open(path, "ab") as f:
        f.write(garbage + b"\n")
    with Journal(path) as j:
        b = record(j, 2)
    with caplog.at_level(logging.ERROR, logger="miner.work.journal"):
        with Journal(path) as j:
            assert [e.block_hash_hex_display for e in j.entries()] == [a.block_hash_hex_display,
                                                                        b.block_hash_hex_display]
    assert "line 2 unreadable" in caplog.text


def test_a_record_whose_block_does_not_match_its_hash_is_skipped(tmp_path):
    path = tmp_path / "blocks.jsonl"
    with Journal(path) as j:
        a = record(j, 1)
    lines = path.read_text().splitlines()
    forged = json.loads(lines[0])
    forged["hash"] = fake_hash("other")
    path.write_text(lines[0] + "\n" + json.dumps(forged) + "\n")
    with Journal(path) as j:
        assert [e.block_hash_hex_display for e in j.entries()] == [a.block_hash_hex_display]


def test_file_and_directory_permissions(tmp_path):
    old_umask = os.umask(0)  # even with a permissive umask
    try:
        path = tmp_path / "state" / "journal" / "blocks.jsonl"
        Journal(path).close()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_an_existing_file_is_appended_to_not_recreated(tmp_path):
    path = tmp_path / "blocks.jsonl"
    with Journal(path) as j:
        record(j, 1)
    before = path.read_bytes()
    with Journal(path) as j:
        record(j, 2)
    assert path.read_bytes().startswith(before)
    assert len(path.read_text().splitlines()) == 2


def test_one_process_at_a_time(tmp_path):
    path = tmp_path / "blocks.jsonl"
    j = Journal(path)
    with pytest.raises(JournalError, match="in use"):
        Journal(path)
    j.close()
    j.close()  # idempotent
    Journal(path).close()
    with pytest.raises(ValueError, match="closed"):
        record(j, 1)


def test_same_block_twice_is_one_entry(tmp_path):
    path = tmp_path / "blocks.jsonl"
    with Journal(path) as j:
        a = record(j, 1)
        assert record(j, 1) == a
        assert len(j.entries()) == 1
    assert len(path.read_text().splitlines()) == 1


def test_bad_arguments(tmp_path):
    raw, block_hash, prev_hash, _ = found_block()
    with Journal(tmp_path / "blocks.jsonl") as j:
        with pytest.raises(ValueError, match="do not hash"):
            j.record_found(raw, block_hash_hex_display=fake_hash("x"), prev_hash_hex_display=prev_hash,
                           height=1, job_id="j")
        with pytest.raises(ValueError, match="does not build on"):
            j.record_found(raw, block_hash_hex_display=block_hash, prev_hash_hex_display=fake_hash("y"),
                           height=1, job_id="j")
        with pytest.raises(ValueError):
            j.record_found(raw[:80], block_hash_hex_display=block_hash, prev_hash_hex_display=prev_hash,
                           height=1, job_id="j")
        with pytest.raises(KeyError):
            j.record_result(block_hash, "accepted", final=True)
        j.record_found(raw, block_hash_hex_display=block_hash.upper(), prev_hash_hex_display=prev_hash,
                       height=None, job_id="j")
        with pytest.raises(ValueError):
            j.record_result(block_hash, "", final=True)
        assert j.get(block_hash.upper()).height is None
        assert j.entries() == j.pending()


def test_a_failed_write_leaves_no_partial_line(tmp_path, monkeypatch):
    path = tmp_path / "blocks.jsonl"
    j = Journal(path)
    a = record(j, 1)
    size = path.stat().st_size
    real_write = os.write

    def half_then_enospc(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_module.os, "write", half_then_enospc)
    with pytest.raises(OSError):
        j.record_result(a.block_hash_hex_display, "accepted", final=True)
    monkeypatch.setattr(journal_module.os, "write", real_write)
    assert path.stat().st_size == size
    assert not j.get(a.block_hash_hex_display).final
    j.record_result(a.block_hash_hex_display, "accepted", final=True)
    j.close()
    with Journal(path) as j:
        assert j.get(a.block_hash_hex_display).final_result == "accepted"


# --- pending count, answers in bulk, the word at close, one journal per chain -------------


def test_pending_count_follows_records_and_replay(tmp_path):
    path = tmp_path / "blocks.jsonl"
    with Journal(path) as j:
        entries = [record(j, i) for i in range(3)]
        assert j.pending_count() == 3
        j.record_result(entries[0].block_hash_hex_display, "unavailable", final=False)
        assert j.pending_count() == 3
        j.record_result(entries[0].block_hash_hex_display, "accepted", final=True)
        j.record_result(entries[0].block_hash_hex_display, "duplicate", final=True)  # a second final answer
        assert j.pending_count() == 2
        record(j, 1)  # the same block again: no new entry
        assert j.pending_count() == 2
    with Journal(path) as j:
        assert j.pending_count() == 2 == len(j.pending())


def test_record_results_in_bulk_is_one_write_and_one_fsync(tmp_path, monkeypatch):
    from .journal_gen import found_record, stale_entries, write_journal

    path = tmp_path / "blocks.jsonl"
    blocks = stale_entries(5000, [10, 11])
    write_journal(path, [found_record(h, p, height, raw) for h, p, height, raw in blocks])
    j = Journal(path)
    assert j.pending_count() == 5000
    j.record_result(blocks[0][0], "accepted", final=True)
    syncs, writes = [], []
    real_fsync, real_write = os.fsync, os.write
    monkeypatch.setattr(journal_module.os, "fsync", lambda fd: (syncs.append(fd), real_fsync(fd))[1])
    monkeypatch.setattr(journal_module.os, "write", lambda fd, b: (writes.append(len(b)), real_write(fd, b))[1])
    written = j.record_results([(h, "stale") for h, *_ in blocks], final=True)
    # The one that already had a final answer is left alone.
    assert len(written) == 4999 and {e.final_result for e in written} == {"stale"}
    assert len(syncs) == 1 and len(writes) == 1
    assert j.pending_count() == 0 and j.get(blocks[0][0]).final_result == "accepted"
    j.close()
    with Journal(path) as again:
        assert again.pending_count() == 0 and again.get(blocks[1][0]).results == ("stale",)


def test_close_says_how_many_blocks_are_left_pending(tmp_path, caplog):
    path = tmp_path / "blocks.jsonl"
    j = Journal(path)
    record(j, 0)
    record(j, 1)
    with caplog.at_level(logging.INFO, logger="miner.work.journal"):
        j.close()
        j.close()  # idempotent: said once
    said = [r for r in caplog.records if "left pending" in r.getMessage()]
    assert [r.getMessage() for r in said] == [
        f"2 block(s) left pending in the journal {path}; they are resubmitted on the next start"]
    assert said[0].levelno == logging.WARNING
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="miner.work.journal"), Journal(tmp_path / "empty.jsonl"):
        pass
    assert not [r for r in caplog.records if "left pending" in r.getMessage()]


def test_journal_chain_id():
    from miner.work.journal import journal_chain_id

    block1 = "0f" * 32
    assert journal_chain_id(block1) == "0f" * 8
    assert journal_chain_id(block1.upper()) == "0f" * 8
    assert journal_chain_id(None) == "genesis"
    with pytest.raises(ValueError):
        journal_chain_id("xyz")
