"""The files an operator copies: example configs load and validate with gridminer's own
loaders, the compose file runs gridminer with options it accepts, and the systemd units
pass `systemd-analyze verify` (where systemd is installed) with the hardening in place."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from miner.chain.address import AddressError, address_to_script
from miner.cli import build_parser
from miner.config import load
from tests.deploy.deployfiles import DEPLOY

EXAMPLES = DEPLOY / "examples"
SYSTEMD = DEPLOY / "systemd"
EXAMPLE_MODES = {"solo.toml": "solo", "proxy.toml": "proxy", "agent.toml": "agent", "multisite.toml": "solo",
                 "multisite-site.toml": "site"}
FEED_KINDS = {"static", "csv", "http_json", "entsoe", "ercot"}
DEVICE_KINDS = {"local", "agent", "cgminer", "luxos", "axeos"}
HARDENING = ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
             "PrivateDevices=yes", "RestrictSUIDSGID=yes", "CapabilityBoundingSet=")
# systemd-analyze security: 0 (locked down) .. 10 (exposed); "OK" ends at 4.9.
MAX_EXPOSURE = 2.5


def env_example_names() -> set[str]:
    text = (SYSTEMD / "gridminer.env.example").read_text()
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, re.M))


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    text = path.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.mark.parametrize("name", sorted(EXAMPLE_MODES))
def test_every_example_config_loads(name):
    # The site agents' file serves every site: the site comes from --site.
    overrides = {"bus": {"site": "texas"}} if EXAMPLE_MODES[name] == "site" else None
    config = load(EXAMPLES / name, overrides, env={})
    assert config.mining.mode == EXAMPLE_MODES[name]


@pytest.mark.parametrize("name", ["solo.toml", "multisite.toml"])
def test_example_payout_addresses_are_placeholders_that_refuse_to_mine(name):
    """Nobody who forgets to set an address pays a stranger: the example's is not an address."""
    config = load(EXAMPLES / name, env={})
    with pytest.raises(AddressError):
        address_to_script(config.mining.address, "mainnet")


def test_multisite_example_builds_every_feed_and_device_with_every_kind():
    """Every site of the multi-site example as its site agent builds it (its devices, its
    own feed), and the fleet's view of the same file. Kind "local" (a mining run's own CPU
    workers) is not in it: site agents drive rigs, and the pool daemon hashes nothing."""
    from miner.devices.drivers import make_device
    from miner.fleet.site import has_own_feed, site_setting_problems
    from miner.sched.feeds import feed_for_site
    from miner.sched.scheduler import fleet_setting_problems
    from miner.sched.sites import load_sites

    site_config = load(EXAMPLES / "multisite-site.toml", {"bus": {"site": "texas"}}, env={})
    fleet_config = load(EXAMPLES / "fleet.toml", env={})
    assert Path(site_config.sched.sites).resolve() == Path(fleet_config.sched.sites).resolve()
    assert load(EXAMPLES / "multisite.toml", env={}).sched.sites is None, "the pool daemon schedules nothing"
    fleet = load_sites(site_config.sched.sites)
    environ = {name: "x" for name in env_example_names()}
    assert fleet_setting_problems(fleet, devices=False, environ=environ) == []
    feeds, devices = set(), set()
    for site in fleet.sites:
        assert site_setting_problems(fleet, site.name, environ=environ) == [], site.name
        assert has_own_feed(fleet, site)
        feed_for_site(site, fleet.base_dir)
        feeds.add(site.feed["kind"])
        for table in site.devices:
            make_device(table, site=site.name, environ=environ)
            devices.add(table["kind"])
    assert feeds == FEED_KINDS and devices == DEVICE_KINDS - {"local"}


def test_secrets_the_examples_name_are_listed_in_the_env_file_example():
    text = (EXAMPLES / "multisite-sites.toml").read_text()
    named = set(re.findall(r'(?:token_env|subscription_key_env)\s*=\s*"([A-Z0-9_]+)"', text))
    named |= set(re.findall(r'=\s*"([A-Z][A-Z0-9_]+)"\s*}', text))  # headers_env values
    assert named and named <= env_example_names(), named - env_example_names()
    assert {"GRIDMINER_RPC_USER", "GRIDMINER_RPC_PASSWORD", "GRIDMINER_POOL_PASSWORD",
            "GRIDMINER_AGENT_TOKEN", "GRIDMINER_BUS_PASSWORD", "GRIDMINER_SITE"} <= env_example_names()


def test_multisite_example_names_every_missing_setting_at_once_before_starting_anything(tmp_path):
    """`miner run --sites multisite-sites.toml` without the secrets: one error listing every
    variable the feeds and devices need, and nothing started (no node: its data directory
    and the npm/numba cache stay untouched, and the error comes without a node's wait)."""
    from miner.sched.scheduler import fleet_setting_problems
    from miner.sched.sites import load_sites

    secrets = env_example_names()
    env = {k: v for k, v in os.environ.items() if k not in secrets}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")      # a node would be installed and started here
    proc = subprocess.run([sys.executable, "-m", "miner", "run", "--sites", str(EXAMPLES / "multisite-sites.toml"),
                           "--metrics", "off"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    for var in ("ERCOT_SUBSCRIPTION_KEY", "ERCOT_API_TOKEN", "ENTSOE_TOKEN", "PARIS_RIG01_TOKEN", "UTILITY_API_AUTH",
                "LAB_RIG_TOKEN"):
        assert var in proc.stderr, (var, proc.stderr)
    assert "nothing was started" in proc.stderr
    assert not (tmp_path / "cache").exists(), "something was installed or started before the check"
    # with every variable set, the sites file has nothing left to refuse
    fleet = load_sites(EXAMPLES / "multisite-sites.toml")
    assert fleet_setting_problems(fleet, local_site="lab", environ={n: "x" for n in secrets}) == []


# --- docker compose ------------------------------------------------------------------------

def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def interpolate(value: str) -> str:
    """docker compose's ${VAR:-default} (with the variable unset) and $$ escapes."""
    value = re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", lambda m: m.group(1), value)
    return value.replace("$$", "$")


GRIDMINER_SERVICES = ("gridminer", "fleet", "rig", "site-texas")   # `miner ...` with the image's entrypoint


def test_compose_runs_gridminer_with_options_it_accepts():
    services = compose()["services"]
    assert set(services) == {"bitcoind", "gridminer", "prometheus", "grafana", "nats", "bus-key", "fleet", "rig",
                             "site-texas"}
    for name, service in services.items():
        image = service.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image version"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: publish on loopback only, got {port}"
    gridminer = services["gridminer"]
    args = build_parser().parse_args([interpolate(a) for a in gridminer["command"]])
    assert args.command == "run"
    address_to_script(args.address, "regtest")  # the default payout address is a valid regtest one
    for name in GRIDMINER_SERVICES:
        command = [interpolate(a) for a in services[name]["command"]]
        build_parser().parse_args(command)   # exits (SystemExit) on an option miner does not take
        assert not any("PASSWORD" in a or "password" in a or "TOKEN" in a for a in command), f"{name}: secrets in argv"
    assert {"GRIDMINER_RPC_USER", "GRIDMINER_RPC_PASSWORD"} <= set(gridminer["environment"])
    build = gridminer["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == (DEPLOY / "Dockerfile").resolve()


def test_compose_fleet_bus_uses_the_shipped_server_config_and_one_password_per_user():
    """nats runs deploy/nats/nats-server.conf with every variable it reads set; the fleet and
    the site get the passwords of their own users; the site's sites file and the fleet's
    are one file, whose site has a user on the server."""
    import re as _re

    from miner.sched.sites import load_sites

    services = compose()["services"]
    nats = services["nats"]
    assert "./nats/nats-server.conf:/etc/nats/gridminer.conf:ro" in nats["volumes"]
    wanted = set(_re.findall(r"password: \$([A-Z_]+)", (DEPLOY / "nats" / "nats-server.conf").read_text()))
    assert wanted and wanted <= set(nats["environment"])
    env = {k: interpolate(v).strip('"') for k, v in nats["environment"].items()}
    fleet_pw = interpolate(services["fleet"]["environment"]["GRIDMINER_BUS_PASSWORD"])
    site_pw = interpolate(services["site-texas"]["environment"]["GRIDMINER_BUS_PASSWORD"])
    assert env["GRIDMINER_NATS_FLEET_PASSWORD"] == fleet_pw and env["GRIDMINER_NATS_TEXAS_PASSWORD"] == site_pw
    assert fleet_pw != site_pw
    fleet_config = load(EXAMPLES / "compose-fleet.toml", env={})
    assert Path(fleet_config.sched.sites).name == "compose-sites.toml"
    assert [s.name for s in load_sites(EXAMPLES / "compose-sites.toml").sites] == ["texas"]


def test_compose_rpcauth_default_matches_the_default_password():
    """bitcoind's rpcauth line and gridminer's password are one pair (Bitcoin Core's
    share/rpcauth/rpcauth.py: HMAC-SHA256 keyed with the salt)."""
    import hashlib
    import hmac

    services = compose()["services"]
    [rpcauth] = [interpolate(a) for a in services["bitcoind"]["command"] if a.startswith("-rpcauth=")]
    user, salt_hash = rpcauth.removeprefix("-rpcauth=").split(":")
    salt, digest = salt_hash.split("$")
    password = interpolate(services["gridminer"]["environment"]["GRIDMINER_RPC_PASSWORD"])
    assert user == services["gridminer"]["environment"]["GRIDMINER_RPC_USER"]
    assert hmac.new(salt.encode(), password.encode(), hashlib.sha256).hexdigest() == digest


def test_dockerfile_copies_what_exists_and_runs_unprivileged():
    text = (DEPLOY / "Dockerfile").read_text()
    root = DEPLOY.parent
    for source in re.findall(r"^COPY\s+(.+?)\s+\S+$", text, re.M):
        for part in source.split():
            assert (root / part).exists(), part
    assert re.search(r"^USER gridminer$", text, re.M)
    assert (DEPLOY / "Dockerfile.dockerignore").is_file()


# --- systemd -------------------------------------------------------------------------------

def test_units_have_a_dedicated_user_environment_file_restart_and_hardening():
    unit = unit_settings(SYSTEMD / "gridminer.service")
    assert unit["User"] == ["gridminer"] and unit["Group"] == ["gridminer"]
    assert unit["EnvironmentFile"] == ["/etc/gridminer/gridminer.env"]
    assert unit["Restart"] == ["on-failure"] and "RestartSec" in unit
    assert "/var/lib/gridminer" in unit["ReadWritePaths"][0].split()
    settings = {f"{k}={v}" for k, values in unit.items() for v in values}
    for option in HARDENING:
        assert option in settings, option
    assert "MemoryDenyWriteExecute" not in unit, "numba's JIT needs writable+executable memory"
    sysusers = (SYSTEMD / "gridminer.sysusers.conf").read_text()
    assert re.search(r"^u gridminer ", sysusers, re.M)
    regtest = unit_settings(SYSTEMD / "gridminer-regtest-node.service")
    assert regtest["User"] == ["gridminer"] and regtest["Restart"] == ["on-failure"]


def test_fleet_unit_runs_the_fleet_example_with_the_daemons_user_and_hardening():
    unit = unit_settings(SYSTEMD / "gridminer-fleet.service")
    assert unit["User"] == ["gridminer"] and unit["EnvironmentFile"] == ["/etc/gridminer/gridminer.env"]
    [exec_start] = unit["ExecStart"]
    assert exec_start.split()[1:] == ["fleet", "-c", "/etc/gridminer/fleet.toml"]
    settings = {f"{k}={v}" for k, values in unit.items() for v in values}
    for option in HARDENING:
        assert option in settings, option
    config = load(EXAMPLES / "fleet.toml", env={})
    assert config.sched.sites == str(EXAMPLES / "multisite-sites.toml")
    assert config.bus.user == "fleet" and config.bus.signing_key_file == "/etc/gridminer/fleet.key"
    assert "GRIDMINER_BUS_PASSWORD" in env_example_names()


def test_service_reads_an_example_config_that_loads():
    """ExecStart's -c file is where the README has the operator put an example."""
    [exec_start] = unit_settings(SYSTEMD / "gridminer.service")["ExecStart"]
    assert exec_start.split()[1:] == ["run", "-c", "/etc/gridminer/gridminer.toml"]


def units_with_executables(tmp_path: Path) -> list[Path]:
    """Copies of the units whose ExecStart points at an executable this machine has: verify
    checks that the program exists, and gridminer's venv is not installed here."""
    copies = []
    for unit in sorted(SYSTEMD.glob("*.service")):
        text = re.sub(r"^ExecStart=(\S+)", f"ExecStart={sys.executable}", unit.read_text(), flags=re.M)
        (tmp_path / unit.name).write_text(text)
        copies.append(tmp_path / unit.name)
    return copies


@pytest.fixture
def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (systemd units checked statically only)")
    return path


def test_units_pass_systemd_analyze_verify(systemd_analyze, tmp_path):
    units = units_with_executables(tmp_path)
    done = subprocess.run([systemd_analyze, "verify", *map(str, units)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path, env=dict(os.environ, SYSTEMD_LOG_LEVEL="warning"))
    # verify exits 0 on unknown keys and misplaced options too; it only says so. Lines about
    # other units (the host's own, pulled in as dependencies) are not ours to judge.
    ours = [line for line in (done.stdout + done.stderr).splitlines() if any(u.name in line for u in units)]
    assert done.returncode == 0 and not ours, done.stdout + done.stderr


def test_units_are_locked_down_by_systemds_own_measure(systemd_analyze, tmp_path):
    for unit in units_with_executables(tmp_path):
        done = subprocess.run([systemd_analyze, "security", "--offline=yes", "--no-pager", str(unit)],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
        if done.returncode != 0 and "--offline" in done.stderr:
            pytest.skip("this systemd-analyze cannot assess unit files offline (systemd < 250)")
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout + done.stderr)
        assert match, done.stdout + done.stderr
        assert float(match.group(1)) <= MAX_EXPOSURE, f"{unit.name}: exposure {match.group(1)}"
