"""Real peers on PATH (Bitcoin Core's bitcoind and bitcoin-cli, pooler's minerd): can they run here?

A binary copied from another machine may be on PATH and still fail to start because a
shared library is missing ("error while loading shared libraries: libevent_core-2.1.so.7").
peer_problem() says so in one line, with the Debian packages that provide the libraries,
so a test can skip with a reason a person can act on (or a fixture can install them and
look again: tests/conftest.py does, when it runs as root with apt-get).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

__all__ = ["INSTALL_HINTS", "RUNTIME_APT_PACKAGES", "find_peer", "may_install_packages", "missing_libraries",
           "peer_problem"]

# Debian 12 packages with the run-time libraries of Bitcoin Core (wallet + ZMQ) and
# minerd that a minimal system may lack.
RUNTIME_APT_PACKAGES = ("libevent-2.1-7", "libevent-extra-2.1-7", "libevent-pthreads-2.1-7", "libzmq5",
                        "libsqlite3-0", "libjansson4", "libcurl4")
# What to install when a peer is not on PATH at all.
INSTALL_HINTS = {
    "bitcoind": "install Bitcoin Core (bitcoind, bitcoin-cli; wallet and ZMQ enabled) and put it on PATH",
    "bitcoin-cli": "install Bitcoin Core (bitcoind, bitcoin-cli; wallet and ZMQ enabled) and put it on PATH",
    "minerd": "build pooler's cpuminer 2.5 (https://github.com/pooler/cpuminer) and put minerd on PATH",
}
# Seconds `<peer> --version` may take (a cold disk, a loaded machine).
VERSION_TIMEOUT_S = 30.0

_LOADER_ERROR = re.compile(r"error while loading shared libraries: ([^:\s]+)")


def find_peer(name: str) -> str | None:
    """The peer's executable on PATH, or None."""
    return shutil.which(name)


def missing_libraries(executable: str) -> list[str]:
    """Shared libraries the dynamic loader cannot find for executable (ldd's "not found" lines)."""
    if shutil.which("ldd") is None:
        return []
    try:
        out = subprocess.run(["ldd", executable], capture_output=True, text=True, timeout=VERSION_TIMEOUT_S).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.split("=>")[0].strip() for line in out.splitlines() if "not found" in line]


def peer_problem(name: str) -> str | None:
    """None when the peer is on PATH and `name --version` runs, else why not and what to install."""
    executable = find_peer(name)
    if executable is None:
        return f"{name} is not on PATH: {INSTALL_HINTS.get(name, f'install {name}')}"
    missing = missing_libraries(executable)
    try:
        done = subprocess.run([executable, "--version"], capture_output=True, text=True,
                              timeout=VERSION_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"{executable} --version did not answer within {VERSION_TIMEOUT_S:.0f} s"
    except OSError as e:
        return f"{executable} cannot be run: {e}"
    if done.returncode == 0 and not missing:
        return None
    missing += [m for m in _LOADER_ERROR.findall(done.stderr) if m not in missing]
    if missing:
        return (f"{executable} cannot start: missing shared libraries {', '.join(missing)}; "
                f"install them: apt-get install {' '.join(RUNTIME_APT_PACKAGES)}")
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return f"{executable} --version exited with code {done.returncode}: {' | '.join(tail) or 'no output'}"


def may_install_packages() -> str | None:
    """None when this process may install Debian packages (root with apt-get), else why not."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not running as root"
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine"
    return None
