"""Shared test data access and hypothesis settings for the chain tests."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from hypothesis import HealthCheck, settings

DATA_DIR = Path(__file__).resolve().parent.parent / "data"

# Applied per test (not as a global profile) so other test packages keep their own.
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def load_json(name: str):
    """Parsed JSON file from tests/data (cached: several tests share the big blocks)."""
    with open(DATA_DIR / name, encoding="utf-8") as f:
        return json.load(f)


@functools.cache
def load_bytes(name: str) -> bytes:
    """Raw bytes of a file in tests/data."""
    return (DATA_DIR / name).read_bytes()
