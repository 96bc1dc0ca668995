"""The fleet bus: a NATS connection from `[bus]`, the JetStream key-value buckets, and the
raw reads and writes a site may do with its narrow permissions.

    buckets (streams KV_<bucket>, made by the fleet side):
      gridminer_desired   key = site, value = signed DesiredState   history 5, direct get
      gridminer_reported  key = site, value = SiteReport            history 5
      gridminer_lease     key "leader"                              history 1, max_age = lease TTL

    a site's subjects (everything else is denied to it):
      sub $KV.gridminer_desired.<site>                              live updates of its key
      pub $JS.API.DIRECT.GET.KV_gridminer_desired.$KV.gridminer_desired.<site>   its last value
      pub $KV.gridminer_reported.<site>                             its report (PubAck to its inbox)
      sub _INBOX_<site>.>                                           its replies only

A site never uses the JetStream management API (stream info, consumers): its reads are
direct gets and a plain subscription, so its permissions can stay this small.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
from pathlib import Path
from typing import Any, Awaitable, Callable

from miner.config import BUS_PASSWORD_ENV, BusConfig
# Errors are logged with error_text: nats-py never puts the password in its messages, and the
# URL we log is the configured one (credentials belong in [bus] user, not the URL).
from miner.devices.actuator import LimitedLog, error_text
from miner.fleet.records import check_site_name

log = logging.getLogger(__name__)

DESIRED_BUCKET = "gridminer_desired"
REPORTED_BUCKET = "gridminer_reported"
LEASE_BUCKET = "gridminer_lease"
LEASE_KEY = "leader"
BUCKET_HISTORY = 5
PASSWORD_ENV = BUS_PASSWORD_ENV
# Seconds between reconnect attempts while the bus is away (nats-py waits this long).
RECONNECT_WAIT_SECONDS = 2.0
# Seconds one request (direct get, publish ack, bucket call) may take.
REQUEST_TIMEOUT_SECONDS = 5.0


def stream_of(bucket: str) -> str:
    return f"KV_{bucket}"


def key_subject(bucket: str, key: str) -> str:
    return f"$KV.{bucket}.{key}"


def direct_get_subject(bucket: str, key: str) -> str:
    """Direct get, last-by-subject form (nats-server >= 2.9): an empty request answers the
    key's last message with its headers (Nats-Sequence, KV-Operation) or a 404 status."""
    return f"$JS.API.DIRECT.GET.{stream_of(bucket)}.{key_subject(bucket, key)}"


def site_inbox_prefix(site: str) -> str:
    return f"_INBOX_{check_site_name(site)}"


def site_permissions(site: str) -> dict[str, list[str]]:
    """What a site's user may publish and subscribe to: its own keys and its own inbox."""
    check_site_name(site)
    return {"publish": [direct_get_subject(DESIRED_BUCKET, site), key_subject(REPORTED_BUCKET, site)],
            "subscribe": [key_subject(DESIRED_BUCKET, site), f"{site_inbox_prefix(site)}.>"]}


# The fleet scheduler: the JetStream API (buckets, CAS writes, watches), every key, its
# inboxes. $JS.FC / $JS.ACK carry flow control and acks of the watchers it creates.
FLEET_PERMISSIONS: dict[str, list[str]] = {
    "publish": ["$JS.API.>", "$KV.>", "_INBOX.>", "$JS.FC.>", "$JS.ACK.>"],
    "subscribe": ["$JS.API.>", "$KV.>", "_INBOX.>", "$JS.FC.>", "$JS.ACK.>"],
}


class BusError(RuntimeError):
    """The bus refused or did not answer (permission, timeout, bad reply)."""


class BusStopped(Exception):
    """stop() was called while connecting."""


def instance_name(config: BusConfig) -> str:
    """[bus] name, or host-pid: a fleet instance or site agent in logs and the lease."""
    return config.name or f"{socket.gethostname()}-{os.getpid()}"


StateCallback = Callable[[bool], Awaitable[None] | None]


class Bus:
    """One NATS connection. connect() retries until the server answers or stop() is
    called; nats-py then reconnects forever. `on_state(connected)` is called on each change."""

    def __init__(self, settings: BusConfig, *, site: str | None = None,
                 environ: dict[str, str] | None = None, on_state: StateCallback | None = None) -> None:
        self.settings, self.site = settings, site
        self.environ = os.environ if environ is None else environ
        self.on_state = on_state
        self.nc: Any = None
        self.js: Any = None
        self.connected = False
        self._stopping = asyncio.Event()
        self._log = LimitedLog(log)
        self._closing = False
        self.request_timeout = REQUEST_TIMEOUT_SECONDS
        # The server's last complaints ("Permissions Violation for Publish to ..."), newest last.
        self.errors: collections.deque[str] = collections.deque(maxlen=20)

    def connect_options(self) -> dict[str, Any]:
        """nats-py connect() arguments from [bus] and the environment (no secret logged)."""
        s = self.settings
        options: dict[str, Any] = {
            "servers": [u.strip() for u in s.url.split(",") if u.strip()],
            "name": instance_name(s),
            "allow_reconnect": True, "max_reconnect_attempts": -1,
            "reconnect_time_wait": RECONNECT_WAIT_SECONDS, "connect_timeout": REQUEST_TIMEOUT_SECONDS,
            "disconnected_cb": self._disconnected, "reconnected_cb": self._reconnected,
            "error_cb": self._error, "closed_cb": self._closed,
        }
        if s.user:
            password = self.environ.get(PASSWORD_ENV)
            if not password:
                raise BusError(f"[bus] user {s.user!r} needs its password in the environment variable "
                               f"{PASSWORD_ENV}")
            options.update(user=s.user, password=password)
        if s.creds_file:
            options["user_credentials"] = s.creds_file
        if s.tls_ca:
            import ssl

            ctx = ssl.create_default_context(cafile=s.tls_ca)
            options["tls"] = ctx
        if self.site is not None:
            options["inbox_prefix"] = site_inbox_prefix(self.site)
        return options

    async def connect(self) -> None:
        """Connect, retrying until it works; BusStopped when stop() comes first. nats-py
        itself retries every RECONNECT_WAIT_SECONDS (max_reconnect_attempts -1), so the
        wait races stop() instead of trusting the library to give up."""
        import nats

        options = self.connect_options()
        while not self._stopping.is_set():
            attempt = asyncio.ensure_future(nats.connect(**options))
            stopping = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait({attempt, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
            if not attempt.done():
                attempt.cancel()
                await asyncio.gather(attempt, return_exceptions=True)
                break
            try:
                self.nc = attempt.result()
            except Exception as e:
                self._log.warning("connect", "bus %s: cannot connect (%s); retrying every %.0f s",
                                  self.settings.url, error_text(e), RECONNECT_WAIT_SECONDS)
                try:
                    await asyncio.wait_for(self._stopping.wait(), RECONNECT_WAIT_SECONDS)
                except asyncio.TimeoutError:
                    pass
                continue
            self.js = self.nc.jetstream(timeout=self.request_timeout)
            log.info("bus connected to %s", self.settings.url)
            await self._set_state(True)
            return
        raise BusStopped("the bus was stopped before it connected")

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        self._stopping.set()
        self._closing = True
        if self.nc is not None and not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.close(), 2.0)
            except (asyncio.TimeoutError, Exception) as e:  # closing a dead link must not hang a stop
                log.debug("bus close: %s", error_text(e))
        if self.connected:
            await self._set_state(False)

    async def _set_state(self, connected: bool) -> None:
        if connected == self.connected:
            return
        self.connected = connected
        if self.on_state is not None:
            result = self.on_state(connected)
            if asyncio.iscoroutine(result):
                await result

    async def _disconnected(self) -> None:
        if self.connected and not self._closing:
            log.warning("bus disconnected from %s; reconnecting", self.settings.url)
        await self._set_state(False)

    async def _reconnected(self) -> None:
        log.info("bus reconnected to %s", self.settings.url)
        await self._set_state(True)

    async def _error(self, error: Exception) -> None:
        # Connection refused while the server is away, an authorization violation, a
        # permission error on a subject: one warning a minute per kind of error.
        self.errors.append(error_text(error))
        self._log.warning(f"error:{type(error).__name__}", "bus %s: %s", self.settings.url, error_text(error))

    async def _closed(self) -> None:
        await self._set_state(False)

    # -- the fleet's side: buckets -------------------------------------------------------

    async def fleet_buckets(self, lease_ttl_seconds: float) -> tuple[Any, Any, Any]:
        """(desired, reported, lease) key-value handles, created when missing."""
        desired = await self._bucket(DESIRED_BUCKET, history=BUCKET_HISTORY, direct=True)
        reported = await self._bucket(REPORTED_BUCKET, history=BUCKET_HISTORY, direct=True)
        lease = await self._bucket(LEASE_BUCKET, history=1, ttl=lease_ttl_seconds, direct=True)
        return desired, reported, lease

    async def _bucket(self, bucket: str, *, history: int, ttl: float | None = None, direct: bool) -> Any:
        import nats.js.errors

        try:
            kv = await self.js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            try:
                kv = await self.js.create_key_value(bucket=bucket, history=history, ttl=ttl, direct=direct)
                log.info("bus: created bucket %s", bucket)
            except nats.js.errors.BadRequestError:  # another fleet process made it just now
                kv = await self.js.key_value(bucket)
        info = await self.js.stream_info(stream_of(bucket))
        if direct and not info.config.allow_direct:
            raise BusError(f"bucket {bucket} exists without allow_direct: sites cannot read it; "
                           f"recreate it (nats kv del {bucket}) and let the fleet make it")
        if ttl is not None and abs((info.config.max_age or 0) - ttl) > 1e-3:
            # The lease TTL is the bucket's max age: a different one would let a dead
            # leader's entry live too long or a live leader's expire between renewals.
            await self.js.update_stream(config=_with_max_age(info.config, ttl))
            log.info("bus: bucket %s max age set to %.3g s", bucket, ttl)
        return kv

    # -- a site's side: raw reads and writes -------------------------------------------

    async def read_desired_raw(self, site: str) -> tuple[int, bytes] | None:
        """The site's desired key: (stream sequence, value bytes), or None when the key has
        no value (never written, deleted or purged). BusError when the bus refuses."""
        subject = direct_get_subject(DESIRED_BUCKET, check_site_name(site))
        try:
            msg = await self.nc.request(subject, b"", timeout=self.request_timeout)
        except asyncio.TimeoutError:
            raise BusError(f"direct get of {DESIRED_BUCKET}/{site}: no answer within "
                           f"{self.request_timeout:g} s") from None
        except Exception as e:  # nats.errors.NoRespondersError, permission errors
            raise BusError(f"direct get of {DESIRED_BUCKET}/{site}: {error_text(e)}") from None
        headers = msg.headers or {}
        status = headers.get("Status")
        if status == "404":
            return None
        if status:
            raise BusError(f"direct get of {DESIRED_BUCKET}/{site}: status {status} "
                           f"{headers.get('Description', '')}".rstrip())
        if headers.get("KV-Operation") in ("DEL", "PURGE"):
            return None
        try:
            seq = int(headers["Nats-Sequence"])
        except (KeyError, ValueError):
            raise BusError(f"direct get of {DESIRED_BUCKET}/{site}: reply without Nats-Sequence") from None
        return seq, msg.data

    async def subscribe_desired(self, site: str, callback: Callable[[Any], Awaitable[None]]) -> Any:
        """Every put on the site's desired key as a plain message (msg.data = value)."""
        return await self.nc.subscribe(key_subject(DESIRED_BUCKET, check_site_name(site)), cb=callback)

    async def publish_report(self, site: str, data: bytes) -> int:
        """Store the site's report; the JetStream sequence it got. BusError when refused."""
        import json

        subject = key_subject(REPORTED_BUCKET, check_site_name(site))
        try:
            msg = await self.nc.request(subject, data, timeout=self.request_timeout)
        except asyncio.TimeoutError:
            raise BusError(f"report of {site}: no PubAck within {self.request_timeout:g} s") from None
        except Exception as e:
            raise BusError(f"report of {site}: {error_text(e)}") from None
        try:
            ack = json.loads(msg.data)
        except ValueError:
            raise BusError(f"report of {site}: PubAck is not JSON") from None
        if not isinstance(ack, dict) or "error" in ack or not isinstance(ack.get("seq"), int):
            raise BusError(f"report of {site}: refused: {ack.get('error') if isinstance(ack, dict) else ack!r}")
        return ack["seq"]


def _with_max_age(config: Any, seconds: float) -> Any:
    config.max_age = seconds
    return config


def load_signing_key_file(path: str | Path) -> Any:
    """The fleet's Ed25519 signing key from signing_key_file (ValueError naming the file)."""
    from miner.fleet.records import load_signing_key

    try:
        data = Path(path).read_bytes()
        mode = Path(path).stat().st_mode
    except OSError as e:
        raise ValueError(f"[bus] signing_key_file {path}: cannot read: {e.strerror}") from None
    if mode & 0o077:
        # Whoever reads it can sign desired states every site obeys.
        log.warning("[bus] signing_key_file %s is readable by group or others (mode %o); chmod 600 it",
                    path, mode & 0o777)
    try:
        return load_signing_key(data)
    except ValueError as e:
        raise ValueError(f"[bus] signing_key_file {path}: {e}") from None
