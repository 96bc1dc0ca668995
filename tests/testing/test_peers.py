"""Real peers: the check that a peer on PATH can start (and says what to install when not), and
MinerdProcess driving pooler's minerd into a gridminer StratumPool."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from miner.testing import MinerdError, MinerdProcess, MinerdUnavailable, StratumPool, find_minerd
from miner.testing.peers import RUNTIME_APT_PACKAGES, peer_problem

APT_LINE = "apt-get install " + " ".join(RUNTIME_APT_PACKAGES)


def only_on_path(monkeypatch, directory) -> None:
    monkeypatch.setenv("PATH", str(directory))


def test_an_absent_peer_is_named_with_what_to_install(monkeypatch, tmp_path):
    only_on_path(monkeypatch, tmp_path)
    assert peer_problem("minerd") == ("minerd is not on PATH: build pooler's cpuminer 2.5 "
                                      "(https://github.com/pooler/cpuminer) and put minerd on PATH")
    assert peer_problem("bitcoind").startswith("bitcoind is not on PATH: install Bitcoin Core")
    with pytest.raises(MinerdUnavailable, match="minerd is not on PATH"):
        find_minerd()


def executable_missing_a_library(tmp_path, name: str):
    """A real executable linked against a library that is then removed: the loader refuses to start it."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc) to build an executable with a missing library")
    (tmp_path / "lib.c").write_text("int gridminer_gone(void) { return 0; }\n")
    (tmp_path / "main.c").write_text("int gridminer_gone(void);\nint main(void) { return gridminer_gone(); }\n")
    subprocess.run([cc, "-shared", "-fPIC", "-o", tmp_path / "libgridminergone.so", tmp_path / "lib.c"], check=True)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    subprocess.run([cc, "-o", bindir / name, tmp_path / "main.c", f"-L{tmp_path}", "-lgridminergone"],
                   check=True)
    (tmp_path / "libgridminergone.so").unlink()
    return bindir / name


def test_a_peer_whose_shared_library_is_missing_is_named_with_the_packages(monkeypatch, tmp_path):
    bindir = executable_missing_a_library(tmp_path, "minerd").parent
    only_on_path(monkeypatch, bindir)
    problem = peer_problem("minerd")
    assert problem == (f"{bindir / 'minerd'} cannot start: missing shared libraries libgridminergone.so; "
                       f"install them: {APT_LINE}")


def test_a_regtest_bitcoind_missing_a_library_is_unavailable_not_broken(tmp_path):
    """The node launcher turns the loader's refusal into RegtestUnavailable, which tests skip on."""
    from miner.node.regtest import RegtestNode, RegtestUnavailable

    bitcoind = executable_missing_a_library(tmp_path, "bitcoind")
    node = RegtestNode("bitcoind", bitcoind=bitcoind, datadir=tmp_path / "data")
    try:
        with pytest.raises(RegtestUnavailable, match=r"bitcoind cannot start here: .*libgridminergone\.so"):
            node.start()
    finally:
        node.close()


def test_the_loader_message_alone_is_enough(monkeypatch, tmp_path):
    """Without ldd's help (not an ELF file, say) the name comes from the loader's own message."""
    script = tmp_path / "bitcoind"
    script.write_text("#!/bin/sh\necho 'bitcoind: error while loading shared libraries: libevent_extra-2.1.so.7: "
                      "cannot open shared object file: No such file or directory' >&2\nexit 127\n")
    script.chmod(0o755)
    only_on_path(monkeypatch, tmp_path)
    assert peer_problem("bitcoind") == (f"{script} cannot start: missing shared libraries "
                                        f"libevent_extra-2.1.so.7; install them: {APT_LINE}")


def test_a_peer_that_fails_otherwise_quotes_its_output(monkeypatch, tmp_path):
    script = tmp_path / "minerd"
    script.write_text("#!/bin/sh\necho 'Illegal instruction' >&2\nexit 132\n")
    script.chmod(0o755)
    only_on_path(monkeypatch, tmp_path)
    assert peer_problem("minerd") == f"{script} --version exited with code 132: Illegal instruction"


@pytest.mark.parametrize("name", ["bitcoind", "bitcoin-cli", "minerd"])
def test_the_peers_on_path_start(name):
    if shutil.which(name) is None:
        pytest.skip(f"{name} is not on PATH")
    assert peer_problem(name) is None


# -- minerd into a gridminer pool -----------------------------------------------------------------


def test_minerd_shares_are_counted_as_the_pool_answers(api_node, minerd):
    with StratumPool(api_node) as pool:
        process = minerd(pool.url, "site1.rig1", threads=1)
        process.wait_for_accepted(3, timeout=60)
        assert process.results[:3] == [True, True, True]
        submits = pool.find("mining.submit", direction="in")
        assert submits and {m.worker for m in submits} == {"site1.rig1"}
        assert "accepted: 3/3" in process.output
    process.stop()
    assert not process.running and process.returncode is not None


def test_a_rejected_share_is_counted_with_its_reason(api_node, minerd):
    with StratumPool(api_node) as pool:
        pool.reject_next_share(23, "Low difficulty share")
        process = minerd(pool.url, "site1.rig2", threads=1, debug=True)
        process.wait_for(lambda m: m.rejected >= 1 and m.accepted >= 1, 60, "a rejected and an accepted share")
        assert process.results[0] is False
        assert process.reject_reasons[0] == "Low difficulty share"
        assert process.rejected == process.results.count(False)


def test_stop_ends_minerd_within_its_timeout(api_node, minerd):
    with StratumPool(api_node) as pool:
        process = minerd(pool.url, threads=1)
        process.wait_for(lambda m: m.count("Starting Stratum") >= 1, 30, "minerd's start")
        started = time.monotonic()
        process.stop()
        assert time.monotonic() - started < 5 + 1
        assert not process.running


def test_waiting_on_a_minerd_that_exits_says_so_with_its_log(minerd):
    process = minerd("127.0.0.1:1", threads=1, extra_args=["--retries", "0"])
    with pytest.raises(MinerdError, match=r"minerd exited with code \d+ before 1 accepted shares"):
        process.wait_for_accepted(1, timeout=60)
    assert process.count("Stratum connection failed") >= 1


def test_minerd_process_refuses_zero_threads():
    with pytest.raises(ValueError, match="threads must be >= 1"):
        MinerdProcess("127.0.0.1:3333", threads=0)
