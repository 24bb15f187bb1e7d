"""The browser console: License Management, clients and the audit log in a web page.

A separate process (``floatkeyd console``) that is an admin client of the daemon, like
floatkeyctl: it signs commands with its own admin key and names the console user who
asked in each (the audit log records ``console:alice via <key id>``). docs/CONSOLE.md
describes it; ``floatkeyd.console.app`` builds the ASGI application.
"""

from __future__ import annotations
