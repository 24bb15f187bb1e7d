"""The browser console: License Management, clients and the audit log in a web page.

A separate process (``floatkeyd console``) that is an admin client of the daemon, like
floatkeyctl: it signs commands with its own admin key and names the console user who
asked in each (the audit log records ``console:alice via <key id>``). docs/CONSOLE.md
describes it; ``floatkeyd.console.app`` builds the ASGI application.

Its packages are the ``console`` extra (``pip install 'floatkey[console]'``), which client
machines do without: nothing here imports them before :func:`require_packages` said
they are there.
"""

from __future__ import annotations

import importlib.util
from typing import Final

from floatkeyd.errors import ConsoleUnavailable

__all__ = ["PACKAGES", "require_packages"]

#: The console extra's packages: import name -> distribution name.
PACKAGES: Final = {
    "starlette": "starlette",
    "jinja2": "jinja2",
    "uvicorn": "uvicorn",
    "argon2": "argon2-cffi",
    "python_multipart": "python-multipart",
    "itsdangerous": "itsdangerous",
}


def require_packages(*modules: str) -> None:
    """Raise ``ConsoleUnavailable`` unless ``modules`` (default: all of them) can be imported."""
    missing = [PACKAGES[name] for name in modules or PACKAGES if not _importable(name)]
    if missing:
        raise ConsoleUnavailable(
            f"The console needs floatkey[console] ({', '.join(missing)} missing here): "
            "pip install 'floatkey[console]' into the environment floatkey runs from "
            "(scripts/install-server installs it)."
        )


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
