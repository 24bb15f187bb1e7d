"""What every floatkey command says to ``--version``."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from floatkey.productkey import PRODUCT_VERSION

__all__ = ["VERSION", "version_line"]

try:
    VERSION = version("floatkey")
except PackageNotFoundError:  # pragma: no cover - run from a source tree, not installed
    VERSION = "unknown"


def version_line() -> str:
    """``%(prog)s <version> (product keys for version 8)``, for argparse's version action."""
    return f"%(prog)s {VERSION} (product keys for version {PRODUCT_VERSION})"
