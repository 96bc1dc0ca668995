"""The controller's wiring: every mode a config may choose has the class that runs it."""

import io

import pytest

from miner import config as cfg
from miner import controller
from miner.metrics import Metrics
from miner.modes.agent import AgentMiner
from miner.modes.proxy import ProxyMiner
from miner.modes.solo import SoloMiner


def test_every_mode_a_config_may_choose_has_a_run_class():
    assert set(controller.MODES) == set(cfg.MODES)


@pytest.mark.parametrize("mode, run_class", [("solo", SoloMiner), ("agent", AgentMiner), ("proxy", ProxyMiner)])
def test_build_run_picks_the_class_of_the_configured_mode(mode, run_class):
    overrides = {"mining": {"mode": mode}}
    if mode != "solo":
        overrides["upstream"] = {"pools": ["stratum+tcp://127.0.0.1:3333"], "user": "site.rig"}
    config = cfg.load(None, overrides, env={})
    metrics, out = Metrics(), io.StringIO()
    run = controller.build_run(config, metrics=metrics, out=out)
    assert type(run) is run_class
    assert run.config is config and run.metrics is metrics and run.out is out
