"""Running a fleet's schemas in parallel: a thread per connection.

Workers are closed on every path. On Ctrl-C no new schema is started, running transactions finish (or roll
back), and what was not started is reported so. A run (one stage of it) also stops starting schemas when
its StopRule says so: once its failure limit is reached (--fail-fast, --max-failures, a canary's first
failure), or once the database is taken to be gone (DEAD_AFTER schemas in a row failed on a lost
connection)."""

from __future__ import annotations

import itertools
import queue
import threading
import time
from dataclasses import dataclass, field

from sqlalchemy import Engine

from workspace_tool.chain import Chain
from workspace_tool.dberrors import unreachable_node
from workspace_tool.fleet.migrator import Migrator, RunOptions
from workspace_tool.fleet.outcome import Outcome, Stop, StopReason
from workspace_tool.fleet.report import Progress, ProgressCallback, SchemaResult
from workspace_tool.fleet.stages import Stage
from workspace_tool.schema.operation import Work

# After this many schemas in a row failed on a lost connection (each after its retries), the database is
# taken to be down: no new schema is started.
DEAD_AFTER = 3
# How often the calling thread takes the results the workers have handed over (and feeds the progress
# callback): on a timer, not woken for each schema. Measured over 2,000 schemas with 4 workers: a wake-up per
# result cost ~21 futex calls per schema (55k against 12k a run), the GIL handed back and forth between the
# collector and the workers. The last worker's end is seen at once (it sets the event the collector waits on).
DRAIN_S = 0.05


class StopRule:
    """When a run (one stage of it) starts no new schema, decided across workers as results come in: once
    ``max_failures`` schemas have failed (``--fail-fast`` is 1; None: never for that reason), or once the
    database is taken to be gone (``dead_after`` schemas in a row failed on a lost connection; any other
    result, the server having answered, resets that count). ``stop`` says which, once one holds."""

    def __init__(
        self, max_failures: int | None = None, limit: Stop | None = None, dead_after: int = DEAD_AFTER
    ) -> None:
        self.max_failures = max_failures
        self.limit = limit  # the stop when max_failures is reached
        self.dead_after = dead_after
        self.dead = False
        self.failed = 0
        self.stop: Stop | None = None
        self._in_a_row = 0
        self._lock = threading.Lock()

    def record(self, result: SchemaResult) -> bool:
        """Count one finished schema; True once no new schema should start."""
        with self._lock:
            self._in_a_row = self._in_a_row + 1 if result.connection_lost else 0
            self.failed += result.status == Outcome.FAILED
            if not self.dead and self._in_a_row >= self.dead_after:
                self.dead = True
                node = unreachable_node(result.error)
                why = StopReason.CONNECTION_LOST if node is None else StopReason.NODE_UNREACHABLE
                self.stop = self.stop or Stop(why, node=node, in_a_row=self.dead_after)
            if self.stop is None and self.max_failures is not None and self.failed >= self.max_failures:
                self.stop = self.limit
            return self.stop is not None


@dataclass
class Tracker:
    """Counts results and feeds the progress callback, in the calling thread."""

    total: int
    callback: ProgressCallback | None
    started: float
    done: int = 0
    failed: int = 0
    results: list[SchemaResult] = field(default_factory=list)
    canary: int = 0  # how many of ``total`` are in the canary stage (told in the start event)
    stage: Stage = Stage.MAIN  # the running stage: its results say so
    rule: StopRule = field(default_factory=StopRule)  # the running stage's
    stopped: Stop | None = None  # why no new schema is started (the rule's stop), once known

    def __post_init__(self) -> None:
        self._emit(None)

    def add(self, result: SchemaResult) -> None:
        """Count a result its stage's rule has already seen (workers record theirs before handing them over)."""
        self.keep(result)
        self.done += 1
        self.failed += result.status == Outcome.FAILED
        if self.stopped is None:
            self.stopped = self.rule.stop
        self._emit(result)

    def keep(self, result: SchemaResult) -> None:
        """Keep a result (one that came in while stopping is kept, not counted in the progress)."""
        result.stage = self.stage
        self.results.append(result)

    def _emit(self, result: SchemaResult | None) -> None:
        if self.callback is not None:
            elapsed = time.perf_counter() - self.started
            stop = self.stopped
            text, reason = (None, None) if stop is None else (str(stop), stop.reason)
            self.callback(Progress(self.done, self.total, self.failed, elapsed, result, text, self.canary, reason))


def run_threads(
    engine: Engine,
    chain: Chain,
    work: list[Work],
    workers: int,
    options: RunOptions,
    tracker: Tracker,
    direct: Engine | None = None,
) -> tuple[list[SchemaResult], bool]:
    """A thread per connection (and one to ``direct`` for what needs a session, when it does); the calling
    thread collects results and reports progress, every ``DRAIN_S`` seconds while the workers run and once
    more when the last one is done. A worker that crashes (a bug, not a schema's failure) stops the others
    itself; Ctrl-C (a signal, seen by the calling thread while it waits) stops them too. Every finished
    schema's result is kept, wherever in the calling thread the Ctrl-C landed."""
    tasks: queue.SimpleQueue[Work] = queue.SimpleQueue()
    for item in work:
        tasks.put(item)
    finished: list[SchemaResult] = []  # appended by the workers (atomic), in the order they finish
    crashes: list[BaseException] = []
    stop = threading.Event()  # no new schema is started once set
    cancel = threading.Event()  # interrupted: pending retries give up too
    ended = itertools.count(1)  # workers that have ended (next() is atomic)
    all_ended = threading.Event()

    def worker() -> None:
        migrator = Migrator(engine, chain, options, cancel, direct)
        try:
            while not stop.is_set():
                try:
                    item = tasks.get_nowait()
                except queue.Empty:
                    break
                result = migrator.run(item)
                if tracker.rule.record(result):
                    stop.set()  # before this worker (or another) takes the next schema
                    if tracker.rule.dead:
                        cancel.set()  # the database is gone: pending retries give up too
                finished.append(result)
        except BaseException as exc:  # a bug, not a schema's failure: stop everything and re-raise it
            stop.set()
            crashes.append(exc)
        finally:
            migrator.close()
            if next(ended) == workers:
                all_ended.set()

    threads = [threading.Thread(target=worker, name=f"workspace-fleet-{i}") for i in range(workers)]
    for thread in threads:
        thread.start()
    interrupted = False
    counted = 0

    def count() -> None:
        nonlocal counted
        while counted < len(finished):
            counted += 1
            tracker.add(finished[counted - 1])

    try:
        # not Thread.join(timeout): a Ctrl-C landing in it leaves the thread taken for ended (CPython 3.11)
        while not all_ended.wait(DRAIN_S):  # a timeout: results are counted (and Ctrl-C seen) while waiting
            count()
        count()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stop.set()
        if interrupted:
            cancel.set()
        for thread in threads:
            thread.join()  # running transactions finish (or roll back) first
        kept = {id(result) for result in tracker.results}
        for result in finished:  # those that finished while stopping (kept, not counted in the progress)
            if id(result) not in kept:
                tracker.keep(result)
    if crashes:
        raise crashes[0]
    return tracker.results, interrupted
