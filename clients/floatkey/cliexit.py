"""How floatkey's commands end when the reader of their output has gone away.

``floatkeyctl status | head -1`` closes the pipe after one line. Python then raises
``BrokenPipeError`` where the next write happens: often not in the command at all but
when the interpreter flushes stdout at exit, where it prints "Exception ignored" and
exits 120, so a script sees a failure for what was done. Well-behaved Unix tools end
quietly with the command's own status instead.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["run_command"]


def run_command(command: Callable[[], int]) -> int:
    """Run ``command`` and flush its output; a closed stdout ends it with its own status.

    When the pipe closes before the command has finished, what it did is unknown to us
    but done (an unlock is sent before anything is printed), so it ends with 0.
    """
    status: int | None = None
    try:
        status = command()
        sys.stdout.flush()  # here, inside the try, not at interpreter exit
    except BrokenPipeError:
        # Nothing more can be written: point stdout at /dev/null so that the
        # interpreter's own flush at exit finds nothing to complain about.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0 if status is None else status
    return status
