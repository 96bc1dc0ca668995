"""make_device: [[site.device]] tables -> drivers, and every bad table named precisely."""

from __future__ import annotations

import asyncio
import tomllib

import pytest

from miner.devices.axeos import AxeOSDevice
from miner.devices.cgminer import AgentDevice, CgminerDevice
from miner.devices.drivers import make_device
from tests.devices.emulators import AxeOSEmulator, CgminerEmulator

ENV = {"RIG1_TOKEN": "s3cret"}


def devices_from(toml_text: str, **kw):
    doc = tomllib.loads(toml_text)
    return [make_device(t, site=doc["site"][0]["name"], environ=ENV, **kw) for t in doc["site"][0]["device"]]


SITES = """
[[site]]
name = "texas"

[[site.device]]
kind = "agent"
name = "rig-1"
host = "10.0.0.21"
token_env = "RIG1_TOKEN"
power_w = 250
timeout = 3

[[site.device]]
kind = "cgminer"
name = "s9-1"
host = "10.0.0.31"
port = 4029
power_w = 1350
hashrate_ths = 13.5

[[site.device]]
kind = "cgminer"
name = "r4"
host = "10.0.0.32"
curtail = "ascdisable"

[[site.device]]
kind = "luxos"
name = "s19j-1"
host = "10.0.0.33"

[[site.device]]
kind = "axeos"
name = "bitaxe-1"
url = "http://10.0.0.40"
off = "pause"
levels = { "1.0" = [525, 1200], "0.6" = [400, 1100] }

[[site.device]]
kind = "axeos"
name = "bitaxe-2"
url = "http://10.0.0.41/"
levels = [ { level = 1.0, frequency_mhz = 490, core_mv = 1166 },
           { level = 0.5, frequency_mhz = 400, core_mv = 1100 } ]
restart = false
"""


def test_every_kind_builds_its_driver_with_the_configured_values():
    agent, s9, r4, lux, axe1, axe2 = devices_from(SITES)
    assert isinstance(agent, AgentDevice) and agent.name == "rig-1"
    assert (agent.client.host, agent.client.port, agent.client.token) == ("10.0.0.21", 4028, "s3cret")
    assert agent.client.timeout == 3.0 and agent.power_w == 250.0
    assert isinstance(s9, CgminerDevice) and (s9.curtail, s9.client.port) == ("none", 4029)
    assert s9.nameplate_hs == 13.5e12 and s9.client.token is None
    assert r4.curtail == "ascdisable"
    assert isinstance(lux, CgminerDevice) and lux.curtail == "luxos"
    assert isinstance(axe1, AxeOSDevice) and axe1.off == "pause"
    assert axe1.levels == {1.0: (525, 1200), 0.6: (400, 1100)} and axe1.base_url == "http://10.0.0.40"
    assert axe2.levels == {1.0: (490, 1166), 0.5: (400, 1100)} and axe2.restart is False and axe2.off == "refuse"
    assert axe2.base_url == "http://10.0.0.41"  # trailing slash dropped


@pytest.mark.parametrize("table, message", [
    ({"name": "x"}, "kind must be one of"),
    ({"kind": "antminer", "name": "x"}, "kind must be one of agent, cgminer, luxos, axeos, asic, local, got 'antminer'"),
    ({"kind": "cgminer", "host": "h"}, "missing key 'name'"),
    ({"kind": "cgminer", "name": "x"}, "missing key 'host'"),
    ({"kind": "axeos", "name": "x"}, "missing key 'url'"),
    ({"kind": "cgminer", "name": "x", "host": "h", "hostname": "h"}, "unknown key(s) for kind 'cgminer': hostname"),
    ({"kind": "luxos", "name": "x", "host": "h", "curtail": "none"}, "unknown key(s) for kind 'luxos': curtail"),
    ({"kind": "cgminer", "name": "x", "host": "h", "port": 70000}, "port must be an integer"),
    ({"kind": "cgminer", "name": "x", "host": "h", "port": "4028"}, "port must be an integer"),
    ({"kind": "cgminer", "name": "x", "host": "h", "power_w": -5}, "power_w must be a positive number"),
    ({"kind": "cgminer", "name": "x", "host": "h", "timeout": True}, "timeout must be a positive number"),
    ({"kind": "cgminer", "name": "x", "host": "h", "curtail": "luxos"}, "curtail must be one of none, ascdisable"),
    ({"kind": "agent", "name": "x", "host": "h"}, "an agent needs token_env"),
    ({"kind": "agent", "name": "x", "host": "h", "token_env": "NOPE_TOKEN"},
     "token_env 'NOPE_TOKEN': that environment variable is not set"),
    ({"kind": "agent", "name": "x", "host": "h", "token_env": "RIG1_TOKEN", "token": "t"}, "not both"),
    ({"kind": "axeos", "name": "x", "url": "http://h", "off": "sleep"}, "off must be one of refuse, pause"),
    ({"kind": "axeos", "name": "x", "url": "http://h", "levels": {"1.5": [500, 1200]}}, "levels: level '1.5'"),
    ({"kind": "axeos", "name": "x", "url": "http://h", "levels": [{"level": 1.0, "mhz": 5}]}, "levels: each entry"),
    ({"kind": "axeos", "name": "x", "url": "http://h", "levels": {}}, "levels: empty"),
    ({"kind": "axeos", "name": "x", "url": "http://h", "restart": "yes"}, "restart must be true or false"),
    ({"kind": "local", "name": "cpu"}, "needs the run's local worker pool"),
    ({"kind": "local", "name": "cpu", "host": "h"}, "unknown key(s) for kind 'local': host"),
])
def test_bad_tables_name_the_site_device_and_key(table, message):
    with pytest.raises(ValueError) as e:
        make_device(table, site="texas", environ=ENV)
    assert message in str(e.value)
    assert "site 'texas'" in str(e.value)


def test_token_may_be_literal_in_a_private_config_file():
    dev = make_device({"kind": "agent", "name": "a", "host": "h", "token": "lit"}, site="s", environ={})
    assert dev.client.token == "lit"


def test_local_kind_builds_the_local_worker_driver_over_the_runs_pool():
    from miner.devices.local import LocalWorkers
    from miner.hashing.pool import WorkerPool

    pool = WorkerPool(0, lambda *a: None)  # the run's pool (not started: nothing hashes here)
    dev = make_device({"kind": "local", "name": "cpu", "power_w": 65}, site="s", local_pool=pool)
    assert isinstance(dev, LocalWorkers) and dev.name == "cpu"
    assert dev.pool is pool and dev.power_w == 65.0


def test_devices_built_from_toml_talk_to_their_emulators():
    async def scenario():
        async with CgminerEmulator(firmware="luxos", hashrate_ghs=104_000.0) as lux:
            with AxeOSEmulator(frequency=525, core_mv=1200) as axe:
                lux_dev, axe_dev = devices_from(f"""
[[site]]
name = "lab"
[[site.device]]
kind = "luxos"
name = "s19j"
host = "127.0.0.1"
port = {lux.port}
timeout = 2
[[site.device]]
kind = "axeos"
name = "bitaxe"
url = "{axe.url}"
off = "pause"
levels = {{ "1.0" = [525, 1200] }}
""")
                await lux_dev.apply(0.0)
                await axe_dev.apply(0.0)
                assert not (await lux_dev.read()).hashing and not (await axe_dev.read()).hashing
                await lux_dev.apply(1.0)
                await axe_dev.apply(1.0)
                assert (await lux_dev.read()).hashing and (await axe_dev.read()).hashing

    asyncio.run(scenario())
