"""gridminer: a Bitcoin mining stack for operators who run rigs at several sites."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gridminer")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+source"
