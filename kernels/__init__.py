"""gridminer's hashing core: a pure-Python SHA-256 oracle and numba SHA-256d nonce-scan kernels.

`kernels.search(header76, target, start=0, count=2**32, threads=None)` is the public entry
point; it is imported lazily so that `kernels.sha256` stays usable without numba.
"""

from __future__ import annotations

__all__ = ["search"]


def __getattr__(name: str):
    if name == "search":
        from kernels.scan import search

        return search
    raise AttributeError(f"module 'kernels' has no attribute {name!r}")
