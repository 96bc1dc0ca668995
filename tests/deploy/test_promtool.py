"""deploy/prometheus checked by promtool itself: the config (with its target files and rule
file), the alert rules, and the alert unit tests in deploy/prometheus/tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.deploy.deployfiles import ALERTS, PROMETHEUS, load_alert_rules

SEVERITIES = ("critical", "warning")


def run(promtool: str, *args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_prometheus_config_is_valid(promtool):
    done = run(promtool, "check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout  # alerts.yml was found and checked with it


def test_the_compose_targets_are_valid_in_place_of_the_host_ones(promtool, tmp_path):
    """docker compose mounts compose-targets/ where prometheus.yml expects targets/."""
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(PROMETHEUS / name, tmp_path / name)
    shutil.copytree(PROMETHEUS / "compose-targets", tmp_path / "targets")
    done = run(promtool, "check", "config", "prometheus.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rules_are_valid(promtool):
    done = run(promtool, "check", "rules", ALERTS.name)
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_unit_tests_pass(promtool):
    files = sorted(str(p.relative_to(PROMETHEUS)) for p in (PROMETHEUS / "tests").glob("*.yml"))
    assert files, "no promtool unit test files in deploy/prometheus/tests"
    done = run(promtool, "test", "rules", *files)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_promtool_does_catch_a_broken_rule(promtool, tmp_path):
    """The checks above can fail: an unclosed bracket is refused."""
    (tmp_path / "bad.yml").write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [
        {"alert": "Broken", "expr": "rate(gridminer_hashes_total[5m]"}]}]}))
    assert run(promtool, "check", "rules", "bad.yml", cwd=tmp_path).returncode != 0


def test_every_alert_is_labelled_annotated_and_unit_tested_both_ways():
    rules = load_alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    assert {"GridminerTargetDown", "GridminerSiteNotHashing", "GridminerStratumRejectRatioHigh",
            "GridminerNoNewJob", "GridminerNodeUnreachable", "GridminerPriceFeedStale",
            "GridminerBlockRejected"} <= set(names)
    fired, quiet = set(), set()
    for path in (PROMETHEUS / "tests").glob("*.yml"):
        for test in yaml.safe_load(path.read_text())["tests"]:
            for check in test.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    for rule in rules:
        name = rule["alert"]
        assert "for" in rule, f"{name}: no for:"
        assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity"
        assert {"summary", "description"} <= set(rule.get("annotations", {})), f"{name}: annotations"
        assert name in fired, f"{name}: no unit test shows it firing"
        assert name in quiet, f"{name}: no unit test shows it staying quiet"
