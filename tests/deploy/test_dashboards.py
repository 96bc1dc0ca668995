"""The Grafana dashboards and provisioning as Grafana will read them: JSON with a current
schema version, unique panel ids on a 24-column grid, every datasource reference the
provisioned Prometheus, every query parseable PromQL over metrics gridminer exports."""

from __future__ import annotations

import subprocess

import yaml

from miner.metrics import Metrics
from tests.deploy.deployfiles import (BUILTIN_VARIABLES, DASHBOARDS, DEPLOY, METRIC_NAME, PROVISIONING, VARIABLE,
                                      all_panels, load_alert_rules, load_dashboards, substitute, targets,
                                      variable_query, variables)

# Grafana 10.0 writes schema 38, 10.4-11.2 write 39, later 11.x 40-41; all load each other's
# dashboards (older ones are migrated on load).
SCHEMA_VERSIONS = range(38, 42)
GRID_COLUMNS = 24


def provisioned_datasource() -> dict:
    files = list((PROVISIONING / "datasources").glob("*.yml"))
    assert len(files) == 1
    config = yaml.safe_load(files[0].read_text())
    assert config["apiVersion"] == 1
    [datasource] = config["datasources"]
    return datasource


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def exported_sample_names() -> set[str]:
    """Every sample name gridminer can export (labelled metrics with no child yet included)."""
    names = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                    "gauge": ("",), "info": ("_info",), "summary": ("_count", "_sum")}[family.type]
        names.update(family.name + s for s in suffixes)
    return names


def used_metric_names() -> dict[str, set[str]]:
    """Metric name -> where it is used (dashboard targets and variables, alert rules)."""
    used: dict[str, set[str]] = {}
    for t in targets(load_dashboards()):
        for name in METRIC_NAME.findall(t.expr):
            used.setdefault(name, set()).add(str(t))
    for dash_name, d in load_dashboards().items():
        for v in variables(d):
            for name in METRIC_NAME.findall(variable_query(v)):
                used.setdefault(name, set()).add(f"{dash_name} variable {v['name']}")
    for rule in load_alert_rules():
        for name in METRIC_NAME.findall(rule["expr"]):
            used.setdefault(name, set()).add(rule["alert"])
    return used


def test_dashboards_are_json_with_a_current_schema_and_unique_uids():
    dashboards = load_dashboards()
    uids = [d["uid"] for d in dashboards.values()]
    assert len(set(uids)) == len(uids) == 3
    for name, d in dashboards.items():
        assert d["schemaVersion"] in SCHEMA_VERSIONS, name
        assert d["title"].startswith("gridminer / ") and "gridminer" in d["tags"], name
        assert d.get("id") is None, f"{name}: a provisioned dashboard carries no database id"
        assert 1 <= len(d["uid"]) <= 40, name  # Grafana's uid limit


def test_panel_ids_are_unique_and_panels_fit_the_grid_without_overlapping():
    for name, d in load_dashboards().items():
        ids = [p["id"] for p in all_panels(d)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        cells: dict[tuple[int, int], int] = {}
        for p in all_panels(d):
            g = p["gridPos"]
            assert g["w"] >= 1 and g["h"] >= 1 and 0 <= g["x"] and g["x"] + g["w"] <= GRID_COLUMNS, (name, p["title"])
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{name}: {p['title']!r} overlaps panel {cells[(x, y)]}"
                    cells[(x, y)] = p["id"]


def test_every_datasource_reference_is_the_provisioned_prometheus():
    provisioned = provisioned_datasource()
    assert provisioned["type"] == "prometheus"
    expected = {"type": "prometheus", "uid": provisioned["uid"]}
    for name, d in load_dashboards().items():
        for p in all_panels(d):
            if p["type"] == "row":
                assert not p.get("targets"), f"{name}: row {p['title']!r} has queries"
                continue
            assert p["datasource"] == expected, (name, p["title"])
            for t in p["targets"]:
                assert t["datasource"] == expected, (name, p["title"], t["refId"])
        for v in variables(d):
            assert v["datasource"] == expected, (name, v["name"])
        for a in d["annotations"]["list"]:
            assert a["datasource"] == expected, (name, a.get("name"))


def test_every_panel_has_queries_and_every_variable_it_uses_is_defined():
    for name, d in load_dashboards().items():
        defined = {v["name"] for v in variables(d)}
        for p in all_panels(d):
            if p["type"] == "row":
                continue
            refs = [t["refId"] for t in p.get("targets", [])]
            assert refs and len(refs) == len(set(refs)), (name, p["title"])
            for t in p["targets"]:
                assert t.get("expr", "").strip(), (name, p["title"], t["refId"])
                for var in VARIABLE.findall(t["expr"]):
                    assert var in defined or f"${var}" in BUILTIN_VARIABLES, (name, p["title"], var)
        for v in variables(d):
            assert variable_query(v).startswith(("label_values(", "query_result(")), (name, v["name"])


def test_every_query_is_valid_promql(promtool, tmp_path):
    """promtool parses each query (variables replaced as Grafana would) as a recording rule."""
    values = {"instance": ".*", "site": ".*", "__rate_interval": "1m", "__range": "6h", "__interval": "15s"}
    exprs = [substitute(t.expr, values) for t in targets(load_dashboards())]
    for d in load_dashboards().values():
        for v in variables(d):
            query = substitute(variable_query(v), values)
            if query.startswith("query_result("):
                exprs.append(query[len("query_result("):-1])
    rules = [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]
    (tmp_path / "queries.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    done = subprocess.run([promtool, "check", "rules", "queries.yml"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_queries_and_alerts_name_only_metrics_gridminer_exports():
    exported = exported_sample_names()
    unknown = {name: where for name, where in used_metric_names().items() if name not in exported}
    assert not unknown, f"metrics that miner/metrics.py does not define: {unknown}"


def test_every_metric_is_on_a_dashboard_or_in_an_alert():
    used = set(used_metric_names())
    unused = [family.name for family in Metrics().registry.collect()
              if not used & {family.name + s for s in ("", "_total", "_bucket", "_count", "_sum", "_info")}]
    assert not unused, f"metrics no dashboard shows and no alert reads: {unused}"


def test_provisioning_points_grafana_at_the_dashboards_and_prometheus():
    datasource = provisioned_datasource()
    assert datasource["access"] == "proxy" and datasource["url"] == "$GRIDMINER_PROMETHEUS_URL"
    [provider_file] = (PROVISIONING / "dashboards").glob("*.yml")
    [provider] = yaml.safe_load(provider_file.read_text())["providers"]
    assert provider["type"] == "file"
    grafana = compose()["services"]["grafana"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in grafana["volumes"]}
    # compose mounts the dashboards directory exactly where the provider reads, and the
    # provisioning directory where Grafana looks for it.
    assert (DEPLOY / mounts[provider["options"]["path"]]).resolve() == DASHBOARDS.resolve()
    assert (DEPLOY / mounts["/etc/grafana/provisioning"]).resolve() == PROVISIONING.resolve()
    assert grafana["environment"]["GRIDMINER_PROMETHEUS_URL"] == "http://prometheus:9090"



def test_bounded_children_that_panels_and_alerts_read_exist_at_zero():
    """A fresh run exports blocks by every stage, upstream shares by every answer and the
    worded RPC error kinds at 0: panels show 0, not "no data", and increase() in
    GridminerBlockRejected sees the first rejection (a series born at 1 shows no increase)."""
    from miner.metrics import BLOCK_STAGES, UPSTREAM_SHARE_RESULTS

    registry = Metrics().registry
    for stage in BLOCK_STAGES:
        assert registry.get_sample_value("gridminer_blocks_total", {"stage": stage}) == 0
    for result in UPSTREAM_SHARE_RESULTS:
        assert registry.get_sample_value("gridminer_upstream_shares_total", {"result": result}) == 0
    for kind in ("unavailable", "auth"):
        assert registry.get_sample_value("gridminer_rpc_errors_total", {"kind": kind}) == 0
    assert 'stage="rejected"' in next(r["expr"] for r in load_alert_rules() if r["alert"] == "GridminerBlockRejected")
