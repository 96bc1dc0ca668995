"""The validated config: every bad setting stops the start with the key's name."""

import json
import subprocess
import sys
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miner import config as cfg


def write(tmp_path, text: str):
    path = tmp_path / "gridminer.toml"
    path.write_text(text)
    return path


def test_defaults_need_no_file():
    c = cfg.load()
    assert c.node.url is None and c.node.poll_interval == 0.5 and c.node.template_refresh == 30.0
    assert c.node.longpoll is True and c.mining.threads is None and c.mining.blocks == 0


def test_file_values_and_command_line_overrides(tmp_path):
    path = write(tmp_path, '''
[node]
url = "http://127.0.0.1:18443"
cookie_file = "/var/lib/bitcoind/regtest/.cookie"
poll_interval = 1          # an int where a float is expected is fine
[mining]
address = "bcrt1qexample"
threads = 3
[log]
level = "debug"
''')
    c = cfg.load(path, {"mining": {"threads": 1, "blocks": None}, "node": {"zmq": "tcp://127.0.0.1:28332"}})
    assert c.node.url == "http://127.0.0.1:18443" and c.node.poll_interval == 1.0
    assert c.mining.threads == 1, "the command line wins over the file"
    assert c.mining.blocks == 0, "an option not given (None) leaves the file's value"
    assert c.node.zmq == "tcp://127.0.0.1:28332" and c.log.level == "debug"


@pytest.mark.parametrize("text,key", [
    ("[node]\nurl = 5\n", "node.url"),
    ('[node]\nurl = "ftp://host:1"\n[mining]\naddress = "x"\n', "node.url"),
    ('[node]\nurl = "http://user:secret@host:1"\n[mining]\naddress = "x"\n', "node.url"),
    ('[node]\nurl = "http://host:1"\n', "mining.address"),
    ("[node]\npoll_interval = 0\n", "node.poll_interval"),
    ("[node]\nlongpoll = 1\n", "node.longpoll"),
    ("[node]\nzmq = \"http://x\"\n", "node.zmq"),
    ("[mining]\nthreads = 300\n", "mining.threads"),
    ("[mining]\nthreads = true\n", "mining.threads"),
    ("[mining]\nblocks = -1\n", "mining.blocks"),
    (f"[mining]\ncoinbase_tag = \"{'x' * 61}\"\n", "mining.coinbase_tag"),
    ("[mining]\nadress = \"typo\"\n", "mining.adress"),
    ("[log]\nlevel = \"loud\"\n", "log.level"),
    ("[metrics]\nlisten = \"9108\"\n", "metrics.listen"),
    ("[metrics]\nlisten = \"127.0.0.1:99999\"\n", "metrics.listen"),
    ("[stratum]\nport = 1\n", "stratum.port"),
    ("[stratum]\nlisten = \"3333\"\n", "stratum.listen"),
    ("[stratum]\nextranonce2_size = 8\n", "stratum.extranonce2_size"),
    ("[scheduler]\nsites = 1\n", "[scheduler]"),
    ("[stratum.sites]\nparis = 5\n", "stratum.sites"),
    ("[stratum.sites]\n\"a.b\" = \"x\"\n", "stratum.sites"),
    ("[stratum]\nmessages_per_second = 0\n", "stratum.messages_per_second"),
    ("[stratum]\nmax_connections_per_ip = 0\n", "stratum.max_connections_per_ip"),
    ("[mining]\nmode = \"pool\"\n", "mining.mode"),
    ("[mining]\nmode = \"proxy\"\n", "upstream.pools"),
    ("[mining]\nmode = \"agent\"\n[upstream]\npools = [\"stratum+tcp://h:1\"]\n", "upstream.user"),
    ("[mining]\nmode = \"agent\"\n[upstream]\npools = [\"http://h:1\"]\nuser = \"a.b\"\n", "upstream.pools"),
    ("[upstream]\nprobe_interval = 0\n", "upstream.probe_interval"),
    ("[mining]\nmode = \"agent\"\n[upstream]\npools = [\"stratum+tcp://h\"]\nuser = \"a.b\"\n", "upstream.pools[0]"),
    ("[node\n", "gridminer.toml"),
])
def test_bad_settings_name_their_key(tmp_path, text, key):
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(write(tmp_path, text))
    assert key in str(info.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(cfg.ConfigError, match="not found"):
        cfg.load(tmp_path / "nope.toml")


def test_miner_run_reports_a_bad_config_and_exits_2(tmp_path):
    path = write(tmp_path, "[mining]\nthreads = -2\n")
    out = subprocess.run([sys.executable, "-m", "miner", "run", "-c", str(path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert "mining.threads" in out.stderr and "Traceback" not in out.stderr


# --- secrets never printed ------------------------------------------------------------------

def toml_string(text: str) -> str:
    """A TOML basic string holding `text` (JSON's escapes are TOML's)."""
    return json.dumps(text, ensure_ascii=False)


# Secrets as people type them: any printable text (TOML takes every code point but surrogates).
secret_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=6, max_size=40).map(
    lambda s: "Zq" + s)  # a prefix no message contains by chance

# Where a secret goes wrong: (TOML with {s} for the secret's TOML string, the key the error names).
SECRET_MISTAKES = [
    ("[upstream]\npassword = [{s}]\n", "upstream.password"),               # a list, not a string
    ("[upstream]\npassword = {{ p = {s} }}\n", "upstream.password"),       # a table
    ("[node]\npassword = [{s}, 1]\n", "node.password"),
    ("[agent]\ntoken = [{s}]\n", "agent.token"),
    ("[stratum.sites]\nparis = [{s}]\n", "stratum.sites.paris"),          # the whole table was echoed
    ("[stratum.sites]\nparis = {s}\nlyon = 5\n", "stratum.sites.lyon"),   # one bad entry, another secret
    ("[stratum]\nsites = [{s}]\n", "stratum.sites"),
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(secret=secret_text, mistake=st.sampled_from(SECRET_MISTAKES))
def test_a_wrongly_typed_secret_is_named_by_its_key_never_shown(tmp_path, secret, mistake):
    text, key = mistake
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(write(tmp_path, text.format(s=toml_string(secret))), env={})
    assert key in str(info.value)
    assert secret not in str(info.value) and repr(secret)[1:-1] not in str(info.value)


def _url_secret(secret: str) -> str:
    return quote(secret, safe="")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(secret=secret_text, where=st.sampled_from([
    '[node]\nurl = "http://user:{u}@127.0.0.1:8332"\n[mining]\naddress = "x"\n',
    '[node]\nurl = "ftp://user:{u}@127.0.0.1:8332"\n[mining]\naddress = "x"\n',   # bad scheme too
    '[node]\nurl = "http://127.0.0.1:8332/?password={u}"\n[mining]\naddress = "x"\n',
    '[node]\nzmq = "tcp://u:{u}@127.0.0.1:28332"\n',
    '[mining]\nmode = "agent"\n[upstream]\nuser = "a.b"\npools = ["stratum+tcp://u:{u}@pool:3333"]\n',
    '[mining]\nmode = "agent"\n[upstream]\nuser = "a.b"\npools = ["http://u:{u}@pool:3333"]\n',
]))
def test_a_url_with_credentials_is_refused_without_echoing_them(tmp_path, secret, where):
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(write(tmp_path, where.format(u=_url_secret(secret))), env={})
    assert _url_secret(secret) not in str(info.value) and secret not in str(info.value)


@settings(max_examples=30, deadline=None)
@given(password=secret_text, token=secret_text, rpc=secret_text, site=secret_text)
def test_the_config_repr_shows_no_secret(password, token, rpc, site):
    config = cfg.Config(node=cfg.NodeConfig(url="http://127.0.0.1:8332", user="u", password=rpc),
                        upstream=cfg.UpstreamConfig(password=password), agent=cfg.AgentConfig(token=token),
                        stratum=cfg.StratumConfig(sites={"paris": site}))
    for text in (repr(config), str(config), repr(config.stratum), repr(config.node), repr(config.upstream),
                 repr(config.agent)):
        for secret in (password, token, rpc, site):
            assert secret not in text


def test_secrets_from_the_command_line_override_path_are_not_echoed(tmp_path):
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(None, {"node": {"url": "ftp://user:Zq-cli-secret@127.0.0.1:1"}}, env={})
    assert "node.url" in str(info.value) and "Zq-cli-secret" not in str(info.value)


def test_miner_run_prints_no_secret_of_a_bad_config(tmp_path):
    path = write(tmp_path, '[stratum.sites]\nparis = "Zq-site-secret"\nlyon = ["Zq-typo-secret"]\n'
                           '[upstream]\npassword = "Zq-pool-secret"\n')
    out = subprocess.run([sys.executable, "-m", "miner", "run", "-c", str(path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "stratum.sites.lyon" in out.stderr
    assert "Zq-" not in out.stderr + out.stdout


# --- an open stratum port is a choice, not a default --------------------------------------------

@pytest.mark.parametrize("listen", ["0.0.0.0:3333", "[::]:3333", "192.168.1.10:3333", "miner.lan:3333"])
def test_unknown_sites_off_loopback_need_allow_open_relay(tmp_path, listen):
    with pytest.raises(cfg.ConfigError, match="stratum.allow_unknown_sites.*allow_open_relay"):
        cfg.load(write(tmp_path, f'[stratum]\nlisten = "{listen}"\n'), env={})
    with pytest.raises(cfg.ConfigError, match="allow_open_relay"):
        # Passwords on the listed sites do not close the door: unknown sites still get in.
        cfg.load(write(tmp_path, f'[stratum]\nlisten = "{listen}"\n[stratum.sites]\nparis = "pw"\n'), env={})
    assert cfg.load(write(tmp_path, f'[stratum]\nlisten = "{listen}"\nallow_open_relay = true\n'),
                    env={}).stratum.allow_open_relay
    closed = cfg.load(write(tmp_path, f'[stratum]\nlisten = "{listen}"\nallow_unknown_sites = false\n'
                                      '[stratum.sites]\nparis = "pw"\n'), env={})
    assert closed.stratum.listen == listen


@pytest.mark.parametrize("listen", ["127.0.0.1:3333", "127.0.0.2:3333", "[::1]:3333", "localhost:3333"])
def test_unknown_sites_on_loopback_are_fine(tmp_path, listen):
    assert cfg.load(write(tmp_path, f'[stratum]\nlisten = "{listen}"\n'), env={}).stratum.allow_unknown_sites


def test_follow_reconnect_takes_a_known_policy(tmp_path):
    assert cfg.load().upstream.follow_reconnect == "same-host"
    assert cfg.load(write(tmp_path, '[upstream]\nfollow_reconnect = "never"\n'), env={}).upstream.follow_reconnect \
        == "never"
    with pytest.raises(cfg.ConfigError, match="upstream.follow_reconnect"):
        cfg.load(write(tmp_path, '[upstream]\nfollow_reconnect = "elsewhere"\n'), env={})


def test_bus_section_keys_paths_and_defaults(tmp_path):
    (tmp_path / "c.toml").write_text('[bus]\nurl = "nats://a:4222, tls://b:4222"\nuser = "texas"\n'
                                     'lease_ttl_seconds = 6\nsigning_key_file = "fleet.key"\nstate_dir = "/var/x"\n'
                                     'leader_public_key = "' + "ab" * 32 + '"\n')
    bus = cfg.load(tmp_path / "c.toml").bus
    assert (bus.user, bus.lease_ttl_seconds, bus.desired_ttl_seconds) == ("texas", 6.0, 300.0)
    assert bus.signing_key_file == str(tmp_path / "fleet.key") and bus.state_dir == "/var/x"
    assert cfg.load(None).bus.url == "nats://127.0.0.1:4222"


@pytest.mark.parametrize("text, key", [
    ('url = "http://x:4222"', "bus.url"),
    ('lease_ttl_seconds = 0', "bus.lease_ttl_seconds"),
    ('report_interval_seconds = -1', "bus.report_interval_seconds"),
    ('leader_public_key = "abc"', "bus.leader_public_key"),
    ('user = "a"\ncreds_file = "x.creds"', "bus.user and bus.creds_file"),
    ('pasword = "x"', "bus.pasword"),
])
def test_bad_bus_settings_name_their_key(tmp_path, text, key):
    (tmp_path / "c.toml").write_text(f"[bus]\n{text}\n")
    with pytest.raises(cfg.ConfigError, match=key.replace(".", r"\.")):
        cfg.load(tmp_path / "c.toml")


def test_a_bus_password_in_the_file_or_url_is_refused_and_not_shown(tmp_path):
    (tmp_path / "c.toml").write_text('[bus]\npassword = "hunter2-secret"\n')
    with pytest.raises(cfg.ConfigError, match="GRIDMINER_BUS_PASSWORD") as e:
        cfg.load(tmp_path / "c.toml")
    assert "hunter2" not in str(e.value)
    (tmp_path / "c.toml").write_text('[bus]\nurl = "nats://texas:hunter2-secret@host:4222"\n')
    with pytest.raises(cfg.ConfigError, match="bus.url") as e:
        cfg.load(tmp_path / "c.toml")
    assert "hunter2" not in str(e.value)
