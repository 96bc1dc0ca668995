"""The validated config: every bad setting stops the start with the key's name."""

import subprocess
import sys

import pytest

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
