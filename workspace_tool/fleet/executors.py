"""Running a fleet's schemas in parallel: a thread per connection (the default), or spawned processes.

Workers are closed on every path. On Ctrl-C no new schema is started, running transactions finish (or roll
back), and what was not started is reported so. A run also stops starting schemas once the database is
taken to be gone (DEAD_AFTER schemas in a row failed on a lost connection)."""

from __future__ import annotations

import multiprocessing
import multiprocessing.util
import queue
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field

from sqlalchemy import Engine

from workspace_tool.chain import Chain
from workspace_tool.dberrors import unreachable_node
from workspace_tool.fleet.migrator import Migrator, RunOptions
from workspace_tool.fleet.report import CONNECTION_LOST, Progress, ProgressCallback, SchemaResult
from workspace_tool.schema.operation import Work
from workspace_tool.vocabulary import Status

# After this many schemas in a row failed on a lost connection (each after its retries), the database is
# taken to be down: no new schema is started.
DEAD_AFTER = 3


class ConnectionWatch:
    """Counts schemas that failed in a row on a lost connection, across workers; DEAD_AFTER of them in a
    row mean the database is gone. Any other result (the server answered) resets the count."""

    def __init__(self, limit: int = DEAD_AFTER) -> None:
        self.limit = limit
        self.dead = False
        self._in_a_row = 0
        self._lock = threading.Lock()

    def record(self, result: SchemaResult) -> bool:
        """Count one finished schema; True once the database is taken to be gone."""
        with self._lock:
            self._in_a_row = self._in_a_row + 1 if result.connection_lost else 0
            self.dead = self.dead or self._in_a_row >= self.limit
            return self.dead


@dataclass
class Tracker:
    """Counts results and feeds the progress callback, in the calling thread."""

    total: int
    callback: ProgressCallback | None
    started: float
    done: int = 0
    failed: int = 0
    results: list[SchemaResult] = field(default_factory=list)
    watch: ConnectionWatch = field(default_factory=ConnectionWatch)
    stopped: str | None = None  # why no new schema is started (the database is gone), once known

    def __post_init__(self) -> None:
        self._emit(None)

    def add(self, result: SchemaResult) -> None:
        """Count a result the watch has already seen (workers record theirs before handing them over)."""
        self.results.append(result)
        self.done += 1
        self.failed += result.status == Status.FAILED
        if self.watch.dead and self.stopped is None:
            node = unreachable_node(result.error)
            lost = CONNECTION_LOST if node is None else f"Citus worker {node} is unreachable"
            self.stopped = f"{lost}, {self.watch.limit} schemas in a row failed on it"
        self._emit(result)

    def _emit(self, result: SchemaResult | None) -> None:
        if self.callback is not None:
            elapsed = time.perf_counter() - self.started
            self.callback(Progress(self.done, self.total, self.failed, elapsed, result, self.stopped))


def run_threads(
    engine: Engine, chain: Chain, work: list[Work], workers: int, options: RunOptions, tracker: Tracker
) -> tuple[list[SchemaResult], bool]:
    """A thread per connection; the calling thread collects results and reports progress."""
    tasks: queue.SimpleQueue[Work] = queue.SimpleQueue()
    for item in work:
        tasks.put(item)
    results: queue.SimpleQueue[SchemaResult | BaseException | None] = queue.SimpleQueue()
    stop = threading.Event()  # no new schema is started once set
    cancel = threading.Event()  # interrupted: pending retries give up too

    def worker() -> None:
        migrator = Migrator(engine, chain, options, cancel)
        try:
            while not stop.is_set():
                try:
                    item = tasks.get_nowait()
                except queue.Empty:
                    break
                result = migrator.run(item)
                if options.fail_fast and result.status == Status.FAILED:
                    stop.set()  # before this worker (or another) takes the next schema
                if tracker.watch.record(result):
                    stop.set()  # the database is gone: start nothing more,
                    cancel.set()  # and let pending retries give up
                results.put(result)
        except BaseException as exc:  # a bug, not a schema's failure: stop everything and re-raise it
            results.put(exc)
        finally:
            migrator.close()
            results.put(None)

    threads = [threading.Thread(target=worker, name=f"workspace-fleet-{i}") for i in range(workers)]
    for thread in threads:
        thread.start()
    running, interrupted = len(threads), False
    crash: BaseException | None = None
    try:
        while running:
            try:
                message = results.get(timeout=0.2)
            except queue.Empty:
                continue
            if message is None:
                running -= 1
            elif isinstance(message, BaseException):
                crash = crash or message
                stop.set()
            else:
                tracker.add(message)
                if options.fail_fast and message.status == Status.FAILED:
                    stop.set()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stop.set()
        if interrupted:
            cancel.set()
        for thread in threads:
            thread.join()  # running transactions finish (or roll back) first
        while True:  # results that arrived while stopping
            try:
                message = results.get_nowait()
            except queue.Empty:
                break
            if isinstance(message, SchemaResult):
                tracker.results.append(message)
    if crash is not None:
        raise crash
    return tracker.results, interrupted


# ---------------------------------------------------------------- process pool
_PROCESS_MIGRATOR: Migrator | None = None


def _process_init(config_path: str, options: RunOptions) -> None:
    """Runs in each spawned worker: its own engine, chain (compiled there once) and connection."""
    global _PROCESS_MIGRATOR
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; running transactions finish
    assert options.worker_engine is not None
    engine = options.worker_engine()
    migrator = Migrator(engine, Chain.load(config_path), options)
    _PROCESS_MIGRATOR = migrator

    def close() -> None:
        migrator.close()
        engine.dispose()

    multiprocessing.util.Finalize(None, close, exitpriority=10)


def _process_run(item: Work) -> SchemaResult:
    assert _PROCESS_MIGRATOR is not None
    return _PROCESS_MIGRATOR.run(item)


def run_processes(
    engine: Engine, chain: Chain, work: list[Work], workers: int, options: RunOptions, tracker: Tracker
) -> tuple[list[SchemaResult], bool]:
    """Spawned processes, each with one connection; at most two schemas queued per worker, so stopping
    (fail-fast, Ctrl-C) leaves little to cancel."""
    pending: Iterator[Work] = iter(work)
    in_flight: set[Future[SchemaResult]] = set()
    interrupted = stopping = False
    context = multiprocessing.get_context("spawn")
    executor = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_process_init,
        initargs=(str(chain.config_path), options),
    )
    try:
        while True:
            while not stopping and len(in_flight) < 2 * workers:
                item = next(pending, None)
                if item is None:
                    break
                in_flight.add(executor.submit(_process_run, item))
            if not in_flight:
                break
            try:
                done, in_flight = wait(in_flight, timeout=0.2, return_when=FIRST_COMPLETED)
                for future in done:
                    result = future.result()
                    dead = tracker.watch.record(result)
                    tracker.add(result)
                    if dead and not stopping:  # the database is gone: what is queued is not started
                        in_flight = _cancel_queued(in_flight)
                    stopping = stopping or dead or (options.fail_fast and result.status == Status.FAILED)
            except KeyboardInterrupt:
                interrupted = stopping = True
                in_flight = _cancel_queued(in_flight)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        for future in in_flight:
            finished = future.done() and not future.cancelled() and future.exception() is None
            if finished and future.result() not in tracker.results:
                tracker.results.append(future.result())
    return tracker.results, interrupted


def _cancel_queued(in_flight: set[Future[SchemaResult]]) -> set[Future[SchemaResult]]:
    """Cancel the futures no worker has started; the running ones are kept."""
    for future in in_flight:
        future.cancel()
    return {f for f in in_flight if not f.cancelled()}
