"""One validated configuration, built at start from a TOML file and command-line options.

A bad setting fails fast with the key's name and what was expected. Secrets (RPC
user/password) come from the file or the environment, never from the command line, and
no error message or repr shows one (SECRET_KEYS; URLs with credentials are not echoed).

    [node]                      # omit `url` to start the pinned regtest node
    url = "http://127.0.0.1:18443"
    cookie_file = "~/.bitcoin/regtest/.cookie"   # or user/password here, or
    user = "..."                                 # GRIDMINER_RPC_USER / GRIDMINER_RPC_PASSWORD
    password = "..."
    zmq = "tcp://127.0.0.1:28332"                # optional: bitcoind's zmqpubhashblock
    poll_interval = 0.5                          # seconds between getbestblockhash polls
    longpoll = true                              # use GBT long-poll when offered
    template_refresh = 30                        # seconds between template refreshes
    timeout = 30                                 # seconds per RPC call

    [mining]
    address = "bcrt1q..."       # payout; checked against the node's network
    threads = 2                 # CPU hashing threads (default: every CPU)
    blocks = 0                  # stop after this many accepted blocks (0: never)
    coinbase_tag = "/gridminer/"
    journal = "~/.local/share/gridminer/found-blocks.jsonl"  # default: one per chain there

    [stratum]
    listen = "127.0.0.1:3333"   # for ASICs and rigs; "off" to disable
    extranonce2_size = 4
    allow_unknown_sites = true  # workers are site.rig; false: only the sites below
    allow_open_relay = false    # needed for allow_unknown_sites off loopback (anyone may mine)
    [stratum.sites]             # site -> password ("" for none)
    paris = "s3cret"
    # limits: max_line_bytes, messages_per_second, message_burst, max_invalid_shares,
    # idle_timeout, unauthorized_timeout, max_connections_per_ip, max_worker_labels

    [metrics]
    listen = "127.0.0.1:9108"   # Prometheus endpoint; "off" to disable

    [log]
    level = "info"
    status_interval = 5         # seconds between status lines

    [sched]                     # live scheduling by power price (off without `sites`)
    sites = "sites.toml"        # sites file, relative to this file (--sites: to the cwd)
    interval_seconds = 60       # seconds between scheduler steps
    local_site = "texas"        # the site the local CPU workers belong to (and label)
    policy = "gridminer"        # the policy by name (miner.sched.policy.make_policy)

    [bus]                       # the fleet bus (NATS JetStream): miner fleet and site agents
    url = "nats://127.0.0.1:4222"   # comma-separated for a cluster; tls:// for TLS
    user = "texas"              # password only from GRIDMINER_BUS_PASSWORD; or creds_file
    desired_ttl_seconds = 300   # how long a site trusts its last desired state
    lease_ttl_seconds = 15      # fleet leader lease
    report_interval_seconds = 15
    signing_key_file = "fleet.key"      # fleet: Ed25519 key (miner fleet keygen)
    leader_public_key = "ab12..."       # sites: the fleet key's public half (hex or base64)
    site = "texas"              # site mode: the site this agent runs (--site); user defaults to it
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names the key."""


@dataclass(frozen=True)
class NodeConfig:
    url: str | None = None
    cookie_file: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    zmq: str | None = None
    poll_interval: float = 0.5
    longpoll: bool = True
    template_refresh: float = 30.0
    timeout: float = 30.0


MODES = ("solo", "agent", "proxy", "site")


@dataclass(frozen=True)
class MiningConfig:
    mode: str = "solo"  # solo: GBT from a node; agent: CPU workers on a stratum pool, cgminer API;
    # proxy: rigs connect to our stratum server and mine the upstream pool's jobs
    address: str | None = None
    threads: int | None = None  # None: every CPU this process may use
    blocks: int = 0
    coinbase_tag: str = "/gridminer/"
    journal: str | None = None


@dataclass(frozen=True)
class UpstreamConfig:
    pools: list[str] = field(default_factory=list)  # stratum+tcp://HOST:PORT, in order of preference
    user: str | None = None  # worker name, e.g. site.rig
    password: str | None = field(default=None, repr=False)  # or GRIDMINER_POOL_PASSWORD; most pools take anything
    silent_after: float = 120.0  # s without a job before failing over
    probe_interval: float = 30.0  # s between checks whether a better-ranked pool is back
    # Where a pool's client.reconnect may send us (and our worker name and password):
    # "same-host" (another port of the configured host), "any", or "never" (ignore it).
    follow_reconnect: str = "same-host"


@dataclass(frozen=True)
class AgentConfig:
    api: str = "127.0.0.1:4028"  # cgminer-compatible API; "off" disables it
    token: str | None = field(default=None, repr=False)  # for pause/resume; or GRIDMINER_AGENT_TOKEN
    # (required off loopback)


@dataclass(frozen=True)
class StratumConfig:
    listen: str = "127.0.0.1:3333"  # HOST:PORT for ASICs and rigs; "off" disables the server
    extranonce2_size: int = 4
    # Workers are named site.rig. sites: site -> password ("" for none); workers of other
    # sites are accepted (and counted as site "other") only while allow_unknown_sites is true.
    sites: dict[str, str] = field(default_factory=dict, repr=False)  # the values are passwords
    allow_unknown_sites: bool = True
    # A listener off loopback that lets unknown sites in (no password) is an open relay:
    # anyone who reaches the port mines through us (in proxy mode, into our pool account).
    # Refused unless this says the operator means it (e.g. a firewalled LAN or a container
    # whose port is published on loopback only).
    allow_open_relay: bool = False
    max_line_bytes: int = 16384  # a longer line closes the connection
    messages_per_second: float = 50.0  # sustained requests per connection
    message_burst: float = 200.0  # requests allowed at once per connection
    max_invalid_shares: int = 100  # consecutive rejected shares before a disconnect
    idle_timeout: float = 600.0  # s without a message from an authorized miner
    unauthorized_timeout: float = 30.0  # s a connection may stay without authorizing
    max_connections_per_ip: int = 256  # connections not yet authorized, per IPv4 address or IPv6 /64
    max_connections: int = 100000  # stratum connections in all
    max_worker_labels: int = 200  # worker names with their own per-worker metric label; the rest: "other"


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = "127.0.0.1:9108"  # HOST:PORT of the Prometheus endpoint; "off" disables it


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    status_interval: float = 5.0


@dataclass(frozen=True)
class SchedConfig:
    sites: str | None = None  # sites TOML (miner.sched.sites); None: no scheduler
    interval_seconds: float = 60.0  # s between scheduler steps
    local_site: str | None = None  # site of the local CPU workers; default: a site with a kind "local" device
    policy: str = "gridminer"


@dataclass(frozen=True)
class BusConfig:
    url: str = "nats://127.0.0.1:4222"  # NATS server(s), comma-separated; never with credentials
    user: str | None = None  # its password only from GRIDMINER_BUS_PASSWORD (never the file or argv)
    creds_file: str | None = None  # NATS credentials file (JWT + nkey seed), instead of user/password
    tls_ca: str | None = None  # CA file to verify the server's certificate
    desired_ttl_seconds: float = 300.0  # a site trusts its last desired state this long, then its fail-safe
    lease_ttl_seconds: float = 15.0  # fleet leader lease: a standby takes over this long after the leader dies
    report_interval_seconds: float = 15.0  # s between a site's reports (and after every apply)
    name: str | None = None  # this fleet instance or site agent in logs and the lease; default host-pid
    signing_key_file: str | None = None  # fleet: Ed25519 private key (PEM, or the 32-byte seed in hex)
    leader_public_key: str | None = None  # sites: the fleet key's raw 32-byte public key, hex or base64
    state_dir: str | None = None  # sites: where the highest applied revision is kept
    site: str | None = None  # site mode: the site of the sites file this agent runs (user defaults to it)


def data_dir() -> Path:
    """Where gridminer keeps its state by default: $XDG_DATA_HOME/gridminer, else
    ~/.local/share/gridminer."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "gridminer"


@dataclass(frozen=True)
class Config:
    node: NodeConfig = NodeConfig()
    mining: MiningConfig = MiningConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    agent: AgentConfig = AgentConfig()
    stratum: StratumConfig = StratumConfig()
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()
    sched: SchedConfig = SchedConfig()
    bus: BusConfig = BusConfig()

    def default_journal_path(self, chain: str) -> Path:
        """One journal per network and chain (chain: "regtest-<block 1 hash prefix>", from
        miner.work.submit.node_chain_name): old entries of another chain never slow a start."""
        return data_dir() / f"found-blocks-{chain}.jsonl"


_SECTIONS = {"node": NodeConfig, "mining": MiningConfig, "upstream": UpstreamConfig, "agent": AgentConfig,
             "stratum": StratumConfig, "metrics": MetricsConfig, "log": LogConfig, "sched": SchedConfig, "bus": BusConfig}
_LEVELS = ("debug", "info", "warning", "error")


# Keys whose values are secrets: an error names the key and the type, never the value.
SECRET_KEYS = frozenset({"node.password", "upstream.password", "agent.token", "stratum.sites"})
FOLLOW_RECONNECT = ("same-host", "any", "never")


def _shown(key: str, value: Any) -> str:
    """A value for an error message: its repr, or only its type for a secret key."""
    if key in SECRET_KEYS or key.split("[", 1)[0] in SECRET_KEYS:
        return f"{type(value).__name__} (value not shown: a secret)"
    return f"{type(value).__name__} {value!r}"


def _check_type(key: str, value: Any, expected: type) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected a number, got {_shown(key, value)}")
    if not isinstance(value, expected):
        raise ConfigError(f"{key}: expected {expected.__name__}, got {_shown(key, value)}")
    return value


def is_loopback_host(host: str | None) -> bool:
    """localhost, 127.0.0.0/8 or ::1; an empty host, 0.0.0.0, :: or any name binds wider."""
    if not host:
        return False
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def url_has_secrets(url: str) -> bool:
    """Whether a URL carries credentials (user:password@) or a query that may hold a token."""
    parts = urlsplit(url)
    return "@" in parts.netloc or bool(parts.query) or bool(parts.fragment)


def _section(name: str, cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}]: expected a table")
    known = {f.name: f for f in fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{name}.{key}: unknown key (known: {', '.join(sorted(known))})")
    values = {}
    for key, value in raw.items():
        annotation = str(known[key].type)
        expected = dict if "dict" in annotation else list if "list" in annotation else \
            float if "float" in annotation else int if "int" in annotation else \
            bool if "bool" in annotation else str
        values[key] = _check_type(f"{name}.{key}", value, expected)
        for i, item in enumerate(value if expected is list else ()):
            if not isinstance(item, str):
                raise ConfigError(f"{name}.{key}[{i}]: expected a string, got {_shown(f'{name}.{key}', item)}")
        for k, v in (value.items() if expected is dict else ()):
            if not isinstance(v, str):  # TOML keys are always strings
                raise ConfigError(f"{name}.{key}.{k}: expected a string, got {_shown(f'{name}.{key}', v)}")
    return cls(**values)


def validate(config: Config) -> Config:
    n, m, lg = config.node, config.mining, config.log
    # URLs are checked for credentials first, and a URL that has any is never echoed.
    if n.url is not None and url_has_secrets(n.url):
        # The URL may come from the command line, where every local user can read it.
        raise ConfigError("node.url: no credentials or query in the URL (not shown here); use node.cookie_file, "
                          "node.user/password in the config file, or GRIDMINER_RPC_USER / GRIDMINER_RPC_PASSWORD")
    if n.url is not None and not n.url.startswith(("http://", "https://")):
        raise ConfigError(f"node.url: expected http://HOST:PORT, got {n.url!r}")
    if n.zmq is not None and url_has_secrets(n.zmq):
        raise ConfigError("node.zmq: expected tcp://HOST:PORT, without credentials or query (not shown here)")
    if n.zmq is not None and not n.zmq.startswith(("tcp://", "ipc://")):
        raise ConfigError(f"node.zmq: expected tcp://HOST:PORT, got {n.zmq!r}")
    for key in ("poll_interval", "template_refresh", "timeout"):
        if getattr(n, key) <= 0:
            raise ConfigError(f"node.{key}: must be > 0 seconds, got {getattr(n, key)}")
    if m.mode not in MODES:
        raise ConfigError(f"mining.mode: expected one of {', '.join(MODES)}, got {m.mode!r}")
    if m.mode in ("agent", "proxy") or (m.mode == "site" and config.upstream.pools):
        if not config.upstream.pools:
            raise ConfigError(f"upstream.pools: {m.mode} mode needs at least one pool (stratum+tcp://HOST:PORT)")
        for i, url in enumerate(config.upstream.pools):
            if url_has_secrets(url):
                raise ConfigError(f"upstream.pools[{i}]: no credentials in a pool URL (not shown here); the worker "
                                  "is upstream.user, the password upstream.password or GRIDMINER_POOL_PASSWORD")
            if not url.startswith("stratum+tcp://"):
                raise ConfigError(f"upstream.pools[{i}]: expected stratum+tcp://HOST:PORT, got {url!r}")
            from miner.stratum.client import PoolURL  # the client's own parser: one place for the form

            try:
                PoolURL.parse(url)
            except ValueError as e:
                raise ConfigError(f"upstream.pools[{i}]: {e}") from None
        if not config.upstream.user:
            raise ConfigError(f"upstream.user: {m.mode} mode needs a worker name (e.g. site.rig)")
        if config.agent.api != "off":
            parse_listen(config.agent.api, "agent.api")
    if config.upstream.follow_reconnect not in FOLLOW_RECONNECT:
        raise ConfigError(f"upstream.follow_reconnect: expected one of {', '.join(FOLLOW_RECONNECT)}, "
                          f"got {config.upstream.follow_reconnect!r}")
    for key in ("silent_after", "probe_interval"):
        if getattr(config.upstream, key) <= 0:
            raise ConfigError(f"upstream.{key}: must be > 0 seconds, got {getattr(config.upstream, key)}")
    if m.mode == "solo" and n.url is not None and m.address is None:
        raise ConfigError("mining.address: required with node.url (the payout address)")
    if m.threads is not None and not 0 <= m.threads <= 256:
        raise ConfigError(f"mining.threads: expected 0..256, got {m.threads}")
    if m.blocks < 0:
        raise ConfigError(f"mining.blocks: expected >= 0, got {m.blocks}")
    if len(m.coinbase_tag.encode()) > 60:
        raise ConfigError("mining.coinbase_tag: at most 60 bytes (the coinbase scriptSig holds 100)")
    if config.metrics.listen != "off":
        parse_listen(config.metrics.listen, "metrics.listen")
    st = config.stratum
    if st.listen != "off":
        host, _ = parse_listen(st.listen, "stratum.listen")
        if not is_loopback_host(host) and st.allow_unknown_sites and not st.allow_open_relay:
            raise ConfigError(
                f"stratum.allow_unknown_sites: true on {st.listen} lets anyone who reaches that port mine through "
                "this server without a password (in proxy mode: into your pool account). Listen on 127.0.0.1, "
                "or set allow_unknown_sites = false and list the sites with passwords in [stratum.sites], "
                "or set stratum.allow_open_relay = true if the port is firewalled to your rigs")
    for key in ("max_line_bytes", "max_invalid_shares", "max_connections_per_ip", "max_connections"):
        if getattr(st, key) < 1:
            raise ConfigError(f"stratum.{key}: expected >= 1, got {getattr(st, key)}")
    if st.max_worker_labels < 0:
        raise ConfigError(f"stratum.max_worker_labels: expected >= 0, got {st.max_worker_labels}")
    for key in ("messages_per_second", "message_burst", "idle_timeout", "unauthorized_timeout"):
        if getattr(st, key) <= 0:
            raise ConfigError(f"stratum.{key}: must be > 0, got {getattr(st, key)}")
    for site in st.sites:
        if not site or "." in site:
            raise ConfigError(f"stratum.sites: a site name is the part of a worker name before the dot, got {site!r}")
    if not 2 <= config.stratum.extranonce2_size <= 4:
        raise ConfigError(f"stratum.extranonce2_size: expected 2..4 (extranonce1 is 4 of the coinbase's 8 "
                          f"bytes), got {config.stratum.extranonce2_size}")
    if lg.level not in _LEVELS:
        raise ConfigError(f"log.level: expected one of {', '.join(_LEVELS)}, got {lg.level!r}")
    if lg.status_interval <= 0:
        raise ConfigError(f"log.status_interval: must be > 0 seconds, got {lg.status_interval}")
    sc = config.sched
    if not sc.interval_seconds > 0:
        raise ConfigError(f"sched.interval_seconds: must be > 0 seconds, got {sc.interval_seconds}")
    if sc.local_site is not None and sc.sites is None:
        raise ConfigError("sched.local_site: needs sched.sites (the sites file that names it)")
    validate_bus(config.bus)
    if m.mode == "site":
        _validate_site_mode(config)
    return config


def _validate_site_mode(config: Config) -> None:
    b = config.bus
    if not b.site:
        raise ConfigError("bus.site: site mode needs the site it runs (--site NAME)")
    if config.sched.sites is None:
        raise ConfigError("sched.sites: site mode needs the sites file with its devices (--sites FILE)")
    if not b.leader_public_key:
        raise ConfigError("bus.leader_public_key: site mode needs the leader's public key (miner fleet keygen "
                          "prints it) to verify desired states")


BUS_SCHEMES = ("nats://", "tls://")
BUS_PASSWORD_ENV = "GRIDMINER_BUS_PASSWORD"


def validate_bus(bus: BusConfig) -> BusConfig:
    urls = [u.strip() for u in bus.url.split(",")]
    for url in urls:
        if url_has_secrets(url):
            raise ConfigError(f"bus.url: no credentials or query in the URL (not shown here); give bus.user and "
                              f"the password in {BUS_PASSWORD_ENV}, or bus.creds_file")
        if not url.startswith(BUS_SCHEMES) or not urlsplit(url).hostname:
            raise ConfigError(f"bus.url: expected nats://HOST:PORT (or tls://), comma-separated, got {url!r}")
    if bus.user is not None and bus.creds_file is not None:
        raise ConfigError("bus.user and bus.creds_file: give one way to authenticate, not both")
    for key in ("desired_ttl_seconds", "lease_ttl_seconds", "report_interval_seconds"):
        if not getattr(bus, key) > 0:
            raise ConfigError(f"bus.{key}: must be > 0 seconds, got {getattr(bus, key)}")
    if bus.leader_public_key is not None:
        from miner.fleet.records import load_public_key

        try:
            load_public_key(bus.leader_public_key)
        except ValueError as e:
            raise ConfigError(f"bus.{e}") from None
    return bus


def parse_listen(value: str, key: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [::1]:PORT) -> (host, port), or ConfigError naming the key."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: expected HOST:PORT, got {value!r}")
    return host, int(port)


def load(path: str | os.PathLike | None = None, overrides: dict[str, dict[str, Any]] | None = None,
         env: dict[str, str] = os.environ) -> Config:
    """Config from a TOML file (optional) with command-line overrides applied, validated.

    Secrets missing from the file come from the environment: GRIDMINER_POOL_PASSWORD,
    GRIDMINER_AGENT_TOKEN (RPC credentials are read by the node client itself)."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path}: not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path}: {e}") from None
    for key in raw:
        if key not in _SECTIONS:
            raise ConfigError(f"[{key}]: unknown section (known: {', '.join(_SECTIONS)})")
    if isinstance(raw.get("bus"), dict) and "password" in raw["bus"]:
        raise ConfigError(f"bus.password: not read from a file; put it in the environment variable {BUS_PASSWORD_ENV}")
    sections = {name: _section(name, cls, raw.get(name, {})) for name, cls in _SECTIONS.items()}
    if path is not None:
        # Files named in [bus] are relative to the config file, as the sites file is.
        bus = sections["bus"]
        sections["bus"] = replace(bus, **{key: str(Path(path).parent / Path(getattr(bus, key)).expanduser())
                                          for key in ("creds_file", "tls_ca", "signing_key_file", "state_dir")
                                          if getattr(bus, key) is not None})
    if path is not None and sections["sched"].sites is not None:
        # A sites file named in the config is relative to the config file, not the cwd.
        sites = Path(path).parent / Path(sections["sched"].sites).expanduser()
        sections["sched"] = replace(sections["sched"], sites=str(sites))
    for name, values in (overrides or {}).items():
        given = {k: v for k, v in values.items() if v is not None}
        if given:
            sections[name] = replace(sections[name], **{k: _check_type(f"{name}.{k}", v, type(v))
                                                         for k, v in given.items()})
    if sections["upstream"].password is None and env.get("GRIDMINER_POOL_PASSWORD"):
        sections["upstream"] = replace(sections["upstream"], password=env["GRIDMINER_POOL_PASSWORD"])
    if sections["agent"].token is None and env.get("GRIDMINER_AGENT_TOKEN"):
        sections["agent"] = replace(sections["agent"], token=env["GRIDMINER_AGENT_TOKEN"])
    return validate(Config(**sections))
