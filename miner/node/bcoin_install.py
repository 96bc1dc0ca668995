"""Installing the pinned bcoin regtest node from the npm registry into a per-user cache.

Why a cache keyed by the lockfile: `npm ci` takes seconds, not the minutes a node
download and build would, but it should still run once per pin, not once per test
run, and never write node_modules into the repo or the installed package. The pin
(package.json, package-lock.json, the leveldown preload) lives in miner/node/bcoin/,
shipped as package data, so an installed gridminer installs the same node as a clone.
The install directory is
$XDG_CACHE_HOME/gridminer/regtest-node-<first 16 hex of the lockfile's SHA-256> (else
~/.cache/...): a changed lockfile installs afresh next to the old one. A finished
install carries a marker file; a file lock serialises parallel installers; a staging
directory is renamed into place only when `npm ci` succeeded.

`npm ci --ignore-scripts`: the install scripts would compile native add-ons (bcrypto,
bsip, bstring, mrmr, secp256k1) with node-gyp, which needs a C++ toolchain and Node's
headers; the node runs their JavaScript backends instead (see regtest.py).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "BCOIN_VERSION",
    "PIN_DIR",
    "PIN_FILES",
    "INSTALL_MARKER",
    "LEVELDOWN_SHIM",
    "RegtestError",
    "RegtestUnavailable",
    "bcoin_install_dir",
    "cache_root",
    "find_node_tools",
    "install_bcoin",
    "lockfile_key",
]

log = logging.getLogger(__name__)

BCOIN_VERSION = "1.0.2"
# package.json, package-lock.json and the preload shim: package data, next to this module.
PIN_DIR = Path(__file__).resolve().parent / "bcoin"
LEVELDOWN_SHIM = "leveldown-null-range.js"
PIN_FILES = ("package.json", "package-lock.json", LEVELDOWN_SHIM)
# Written last into a finished install; a directory without it is not used.
INSTALL_MARKER = ".gridminer-install-complete"
# Hex digits of the lockfile's SHA-256 in the install directory's name.
INSTALL_KEY_HEX = 16
# Oldest Node.js major version the pinned bcoin and leveldown's N-API prebuilds run on.
MIN_NODE_MAJOR = 14

# Seconds `npm ci` may take (first install downloads ~100 packages).
NPM_CI_TIMEOUT_S = 600.0
# Lines of npm's output quoted when it fails.
NPM_LOG_TAIL_LINES = 40


class RegtestError(RuntimeError):
    """The regtest node could not be installed, started or used."""


class RegtestUnavailable(RegtestError):
    """The tools to run a regtest node (Node.js and npm, or bitcoind) are not installed."""


def cache_root(env: Mapping[str, str] = os.environ) -> Path:
    """$XDG_CACHE_HOME/gridminer, else ~/.cache/gridminer."""
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gridminer"


def lockfile_key(pin_dir: Path = PIN_DIR) -> str:
    """Short SHA-256 of the pinned package-lock.json: the install directory's key."""
    lock = pin_dir / "package-lock.json"
    try:
        data = lock.read_bytes()
    except FileNotFoundError:
        raise RegtestError(f"{lock} is missing: the pinned regtest node needs it (in a clone: run "
                           f"`npm install --package-lock-only --ignore-scripts` in {pin_dir}; an installed "
                           "gridminer ships it as package data, so reinstall the package)") from None
    return hashlib.sha256(data).hexdigest()[:INSTALL_KEY_HEX]


def bcoin_install_dir(pin_dir: Path = PIN_DIR, root: Path | None = None) -> Path:
    """Where install_bcoin puts (or has put) the pinned node for this lockfile."""
    return (root or cache_root()) / f"regtest-node-{lockfile_key(pin_dir)}"


def find_node_tools() -> tuple[str, str]:
    """Paths of node and npm; RegtestUnavailable naming what is missing or too old."""
    node, npm = shutil.which("node"), shutil.which("npm")
    missing = [name for name, path in (("node", node), ("npm", npm)) if path is None]
    if missing:
        raise RegtestUnavailable(
            f"{' and '.join(missing)} not found on PATH: the pinned regtest node (bcoin {BCOIN_VERSION}) "
            f"needs Node.js >= {MIN_NODE_MAJOR} with npm (https://nodejs.org, or apt-get install nodejs npm)")
    assert node is not None and npm is not None
    try:
        version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30,
                                 check=True).stdout.strip()
        major = int(version.lstrip("v").split(".")[0])
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        raise RegtestUnavailable(f"could not run {node} --version: {e}") from None
    if major < MIN_NODE_MAJOR:
        raise RegtestUnavailable(f"Node.js {version} is too old for the regtest node: need >= {MIN_NODE_MAJOR}")
    return node, npm


def install_bcoin(pin_dir: Path = PIN_DIR, root: Path | None = None, *,
                  timeout: float = NPM_CI_TIMEOUT_S) -> Path:
    """Install the pinned bcoin with `npm ci` unless this lockfile's install exists; return its directory."""
    _, npm = find_node_tools()
    for name in PIN_FILES:
        if not (pin_dir / name).is_file():
            raise RegtestError(f"{pin_dir / name} is missing (the regtest node is pinned there; an installed "
                               "gridminer ships it as package data: reinstall the package)")
    target = bcoin_install_dir(pin_dir, root)
    if (target / INSTALL_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # One installer at a time (parallel test runs share the cache).
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / INSTALL_MARKER).is_file():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            for name in ("package.json", "package-lock.json"):
                shutil.copy2(pin_dir / name, staging / name)
            env = dict(os.environ, npm_config_update_notifier="false", npm_config_fund="false",
                       npm_config_audit="false")
            started = time.monotonic()
            log.info("installing bcoin %s into %s (npm ci)", BCOIN_VERSION, target)
            try:
                done = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
                                      cwd=staging, env=env, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise RegtestError(f"npm ci did not finish within {timeout:.0f} s in {staging}") from None
            if done.returncode != 0:
                output = (done.stdout + done.stderr).strip().splitlines()
                tail = "\n".join(output[-NPM_LOG_TAIL_LINES:])
                raise RegtestError(f"npm ci failed with exit code {done.returncode}:\n{tail}")
            if not (staging / "node_modules" / "bcoin" / "bin" / "node").is_file():
                raise RegtestError(f"npm ci finished but {staging}/node_modules/bcoin/bin/node is missing")
            (staging / INSTALL_MARKER).write_text(f"bcoin {BCOIN_VERSION}\n", encoding="utf-8")
            if target.exists():
                shutil.rmtree(target)  # an unfinished install from an interrupted run
            staging.rename(target)
            log.info("installed bcoin %s in %.1f s", BCOIN_VERSION, time.monotonic() - started)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return target
