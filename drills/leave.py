"""A program's last step without the interpreter's teardown.

At exit Python frees every module and object it holds, one by one: 30 to 90 ms for `atb drill
run` (click, psycopg) and for the drill's pytest child (pytest, pytest-html, jinja2, the
checks), one after the other, while the parent waits for the child. Nothing of the drill
needs that teardown: its files are written and closed, its `atexit` work (the sandbox's files
removed, the log flushed, temporary directories removed) runs here first. So `leave` runs the
exit handlers, flushes the standard streams and ends the process at once.

It does so only when it can lose nothing: this is the only thread left (another thread's
work is waited for by a normal exit, as before), no profiler or tracer watches (`python -m
cProfile` writes its numbers after the program returns), and the streams flushed cleanly (a
closed pipe is left to the normal exit, which reports it as before).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn


def leave(code: int) -> NoReturn:
    """End the process with `code`: at once when nothing is lost by it, else as `sys.exit`."""
    if threading.active_count() == 1 and sys.getprofile() is None and sys.gettrace() is None:
        atexit._run_exitfuncs()  # what a normal exit runs (and then forgets: not run twice)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            sys.exit(code)
        os._exit(code & 0xFF)
    sys.exit(code)
