"""Stratum v1: framing (bytes -> lines) and protocol (lines -> typed messages), no I/O."""
