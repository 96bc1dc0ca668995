"""Fixtures for the deploy/ tests: promtool and prometheus from the Debian package.

Found on PATH, or installed once per session with apt (`prometheus`) when we run as root
on a machine with apt-get; the tests that need them are skipped, with the reason, only
when neither works. Installing the package may start a system Prometheus on :9090: no
test uses it, and the live test's server has its own port, config and storage.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

import pytest

APT_TIMEOUT_S = 600


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "live_prometheus: starts gridminer and a real Prometheus (run alone: "
                                       "pytest -m live_prometheus)")


@dataclass(frozen=True)
class PrometheusTools:
    promtool: str
    prometheus: str


def _apt_install_prometheus() -> str | None:
    """Install the Debian package; None when done, else why it could not be."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not running as root, so the prometheus package cannot be installed (apt-get install prometheus)"
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine to install the prometheus package"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "prometheus"]
    try:
        if subprocess.run(install, env=env, capture_output=True, timeout=APT_TIMEOUT_S).returncode != 0:
            # A fresh machine may have no package lists yet.
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=APT_TIMEOUT_S)
            done = subprocess.run(install, env=env, capture_output=True, timeout=APT_TIMEOUT_S)
            if done.returncode != 0:
                return f"apt-get install prometheus failed: {done.stderr.decode(errors='replace')[-500:]}"
    except subprocess.TimeoutExpired:
        return f"apt-get install prometheus took over {APT_TIMEOUT_S} s"
    return None


@pytest.fixture(scope="session")
def prometheus_tools() -> PrometheusTools:
    promtool, prometheus = shutil.which("promtool"), shutil.which("prometheus")
    if promtool is None or prometheus is None:
        why = _apt_install_prometheus()
        promtool, prometheus = shutil.which("promtool"), shutil.which("prometheus")
        if promtool is None or prometheus is None:
            pytest.skip(why or "promtool/prometheus not on PATH after installing the prometheus package")
    return PrometheusTools(promtool, prometheus)


@pytest.fixture(scope="session")
def promtool(prometheus_tools: PrometheusTools) -> str:
    return prometheus_tools.promtool
