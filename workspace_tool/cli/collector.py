"""The program's garbage collector at start-up. The program (program.py) pauses the cyclic collector before
its command runs, and the command loads what it needs (SQLAlchemy, psycopg2, the library's modules: 0.2-0.3 s)
with it paused: nearly every object made while they load lives to the end, and each collection in that time
(one of them a full one) walks them all for nothing (40-50 ms a run, more on a loaded machine). ``resume``,
called when the command makes its first engine (the imports are done by then, psycopg2's too), freezes what
exists (collections never walk it again) and turns the collector back on for the command's own work. A
command that makes no engine (``lint``, ``history``, ``revision``...) runs to its end without it: they are
short, and what they make is freed at exit.

Outside the program (click's CliRunner, a library calling ``main``) ``resume`` does nothing: the collector
stays as its caller set it."""

from __future__ import annotations

import gc

_paused = False  # pause() turned the collector off, and resume() has not turned it on again


def pause() -> None:
    """Turn the collector off until ``resume`` (if it is on)."""
    global _paused
    _paused = gc.isenabled()
    gc.disable()


def resume() -> None:
    """The collector back on, if ``pause`` turned it off, after freezing every object made so far."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()
