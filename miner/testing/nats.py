"""A throwaway nats-server with JetStream for tests: free loopback port, temporary store,
a fleet user and one user per site with the fleet bus's permissions.

    from miner.testing.nats import NatsServer, find_nats_server

    with NatsServer(sites=["texas", "paris"]) as server:
        server.url                        # nats://127.0.0.1:PORT
        server.fleet_user                 # ("fleet", password)
        server.site_user("texas")         # ("texas", password): its own keys only
        server.stop(); server.start()     # same port and store: a partition and its end
        server.kill()                     # SIGKILL, for crash tests

find_nats_server() gives the binary (PATH, then /usr/sbin where Debian's package puts it)
or raises NatsUnavailable saying what to install; install_nats_server() installs the
Debian package `nats-server` with apt when this process may (root with apt-get).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterable
from pathlib import Path

from miner.fleet.bus import FLEET_PERMISSIONS, site_permissions
from miner.fleet.records import check_site_name
from miner.node.regtest import free_port, kill_quietly, terminate

__all__ = ["APT_PACKAGE", "NatsError", "NatsServer", "NatsUnavailable", "find_nats_server",
           "install_nats_server", "server_config"]

APT_PACKAGE = "nats-server"
# Where the binary may be when it is not on PATH (Debian installs it in /usr/sbin).
EXTRA_LOCATIONS = ("/usr/sbin/nats-server", "/usr/local/sbin/nats-server", "/usr/local/bin/nats-server")
# Seconds nats-server may take to listen with JetStream ready (a loaded machine).
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
APT_TIMEOUT_S = 600
FLEET_USER = "fleet"
READY_LINE = "Server is ready"


class NatsUnavailable(RuntimeError):
    """nats-server is not installed here (the message says how to get it)."""


class NatsError(RuntimeError):
    """nats-server did not start or stop as asked (with its log's tail)."""


def find_nats_server() -> str:
    found = shutil.which("nats-server")
    if found:
        return found
    for path in EXTRA_LOCATIONS:
        if os.access(path, os.X_OK):
            return path
    raise NatsUnavailable(f"nats-server is not installed: install the Debian package {APT_PACKAGE} "
                          "(apt-get install nats-server) or a release from https://nats.io, >= 2.9")


def install_nats_server() -> str | None:
    """Install nats-server with apt; None when done, else why not."""
    from miner.testing.peers import may_install_packages

    why_not = may_install_packages()
    if why_not is not None:
        return why_not
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", APT_PACKAGE]
    try:
        if subprocess.run(install, env=env, capture_output=True, timeout=APT_TIMEOUT_S).returncode == 0:
            return None
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=APT_TIMEOUT_S)
        done = subprocess.run(install, env=env, capture_output=True, timeout=APT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"apt-get install {APT_PACKAGE} took over {APT_TIMEOUT_S} s"
    if done.returncode != 0:
        return f"apt-get install {APT_PACKAGE} failed: {done.stderr.decode(errors='replace')[-300:]}"
    return None


def _quoted(text: str) -> str:
    # JSON strings are valid nats-server config strings, and quoting keeps "$KV..." from
    # being read as a variable reference.
    return json.dumps(text)


def _permissions(perms: dict[str, list[str]]) -> str:
    def allow(subjects: list[str]) -> str:
        return "{allow: [" + ", ".join(_quoted(s) for s in subjects) + "]}"

    return f"{{publish: {allow(perms['publish'])}, subscribe: {allow(perms['subscribe'])}}}"


def server_config(port: int, store_dir: str | Path, users: dict[str, tuple[str, dict[str, list[str]]]]) -> str:
    """nats-server.conf text: loopback listener, JetStream store, `users` as name ->
    (password, {"publish": [...], "subscribe": [...]})."""
    lines = [f"listen: {_quoted(f'127.0.0.1:{port}')}",
             f"jetstream {{ store_dir: {_quoted(str(store_dir))}, max_memory_store: 64MB, max_file_store: 1GB }}",
             "authorization {", "  users = ["]
    for name, (password, perms) in users.items():
        lines.append(f"    {{user: {_quoted(name)}, password: {_quoted(password)}, "
                     f"permissions: {_permissions(perms)}}}")
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


class NatsServer:
    def __init__(self, sites: Iterable[str] = (), *, port: int | None = None, binary: str | None = None,
                 workdir: str | Path | None = None, config_text: str | None = None,
                 environ: dict[str, str] | None = None, monitor_port: int | None = None) -> None:
        """`config_text`: run this configuration instead of the generated one (it must
        listen on 127.0.0.1:`port` and may use "{store_dir}"); `environ`: the server's
        environment (variables the configuration reads); `monitor_port`: serve nats-server's
        HTTP monitoring (/varz: message counts) on 127.0.0.1 there."""
        self.sites = [check_site_name(s) for s in sites]
        self.binary = binary or find_nats_server()
        self.port = port or free_port()
        self._tmp = None if workdir is not None else tempfile.TemporaryDirectory(prefix="gridminer-nats-")
        self.workdir = Path(workdir) if workdir is not None else Path(self._tmp.name)
        self.store_dir = self.workdir / "jetstream"
        self.config_path = self.workdir / "nats-server.conf"
        self.log_path = self.workdir / "nats-server.log"
        self._passwords = {FLEET_USER: secrets.token_hex(16)}
        self._passwords.update({site: secrets.token_hex(16) for site in self.sites})
        self.monitor_port = monitor_port
        self.proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self.environ = environ
        if config_text is None:
            self._write_config()
        else:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.config_path.write_text(config_text.replace("{store_dir}", str(self.store_dir)))
            os.chmod(self.config_path, 0o600)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def fleet_user(self) -> tuple[str, str]:
        return FLEET_USER, self._passwords[FLEET_USER]

    def site_user(self, site: str) -> tuple[str, str]:
        if site not in self.sites:
            raise KeyError(f"site {site!r} has no user on this server (sites: {', '.join(self.sites)})")
        return site, self._passwords[site]

    def _write_config(self) -> None:
        users = {FLEET_USER: (self._passwords[FLEET_USER], FLEET_PERMISSIONS)}
        users.update({site: (self._passwords[site], site_permissions(site)) for site in self.sites})
        self.workdir.mkdir(parents=True, exist_ok=True)
        text = server_config(self.port, self.store_dir, users)
        if self.monitor_port is not None:
            text += f"http: {_quoted(f'127.0.0.1:{self.monitor_port}')}\n"
        self.config_path.write_text(text)
        os.chmod(self.config_path, 0o600)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT_S) -> "NatsServer":
        if self.running:
            return self
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log_file = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.config_path)], stdout=log_file,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.environ)
        finally:
            log_file.close()
        self._finalizer = weakref.finalize(self, kill_quietly, self.proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NatsError(f"nats-server exited with {self.proc.returncode}:\n{self.log_tail()}")
            if READY_LINE in self._log_since(log_offset) and self._listening():
                return self
            time.sleep(0.05)
        self.kill()
        raise NatsError(f"nats-server not ready within {timeout:g} s:\n{self.log_tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (a clean shutdown: JetStream flushes its store), SIGKILL after timeout."""
        if self.proc is not None:
            terminate(self.proc, timeout)
        self._wait_port_free()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._wait_port_free()

    def restart(self, timeout: float = START_TIMEOUT_S) -> "NatsServer":
        self.stop()
        return self.start(timeout)

    def close(self) -> None:
        self.kill()
        if self._finalizer is not None:
            self._finalizer.detach()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> "NatsServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers ---------------------------------------------------------------------------

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def _wait_port_free(self, timeout: float = STOP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while self._listening() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self._log_since(0).splitlines()[-lines:])
