"""Reading deploy/: the dashboards' queries and variables, the alert rules, the metric
names they use. Shared by the static checks and the live Prometheus test."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
DASHBOARD_FILES = ("fleet-overview.json", "mining-health.json", "stratum.json")
PROVISIONING = DEPLOY / "grafana" / "provisioning"
PROMETHEUS = DEPLOY / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"

# Grafana's own variables and what a test substitutes for them.
BUILTIN_VARIABLES = ("$__rate_interval", "$__range", "$__interval")
METRIC_NAME = re.compile(r"\b(?:gridminer_[a-z0-9_]+|process_[a-z0-9_]+|python_info)\b")
VARIABLE = re.compile(r"\$(?:\{)?([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class Target:
    dashboard: str
    panel_id: int
    panel_title: str
    ref_id: str
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel_title} ({self.ref_id})"


def load_dashboards() -> dict[str, dict]:
    return {name: json.loads((DASHBOARDS / name).read_text()) for name in DASHBOARD_FILES}


def all_panels(dashboard: dict) -> Iterator[dict]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def targets(dashboards: dict[str, dict]) -> list[Target]:
    return [Target(name, panel["id"], panel["title"], t.get("refId", ""), t.get("expr", ""))
            for name, d in dashboards.items() for panel in all_panels(d) for t in panel.get("targets", [])]


def variables(dashboard: dict) -> list[dict]:
    return dashboard.get("templating", {}).get("list", [])


def variable_query(variable: dict) -> str:
    query = variable.get("query")
    return query.get("query", "") if isinstance(query, dict) else (query or "")


def load_alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def promql_regex_value(values: list[str]) -> str:
    """A multi-value variable as Grafana puts it in a Prometheus query: (a|b), regex-escaped
    and escaped again for the PromQL string."""
    escaped = [re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", v).replace("\\", "\\\\") for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace $name and ${name} (longest names first, so $__range never eats $__rate_interval)."""
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    return expr
