"""The opt-in background refill a manager runs after it creates a schema (``Refiller``)."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine

from workspace_tool.chain import Chain
from workspace_tool.dberrors import first_line
from workspace_tool.errors import PoolRefused
from workspace_tool.spares.filling import fill

log = logging.getLogger(__name__)


class Refiller:
    """Refills the warm pool in a thread of its own, on connections of its own (never the request's): a
    manager created with ``refill=True`` kicks it after it creates a schema. One thread per manager, and
    one filler per database (the pool's lock is tried, not waited for: another filler is doing it). A
    failure is logged, never raised to a request; a chain the pool refuses turns it off."""

    def __init__(self, engine: Engine, chain: Chain, size: int, *, dispose_engine: bool = False) -> None:
        self.engine = engine
        self.chain = chain
        self.size = size
        self.dispose_engine = dispose_engine
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._again = False
        self._stop = threading.Event()
        self.refused: PoolRefused | None = None

    def kick(self) -> None:
        """Refill now in the background (or once more after the refill under way)."""
        with self._lock:
            if self._stop.is_set() or self.refused is not None:
                return
            if self._thread is not None and self._thread.is_alive():
                self._again = True
                return
            self._again = False
            self._thread = threading.Thread(target=self._run, name="workspace-pool-refill", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                fill(self.engine, self.chain, self.size, jobs=1, wait=False, stop=self._stop)
            except PoolRefused as exc:
                self.refused = exc
                log.warning("%s", exc)
                return
            except Exception as exc:
                log.warning("could not refill the warm pool: %s", first_line(exc))
            with self._lock:
                if not self._again:
                    self._thread = None
                    return
                self._again = False

    def wait(self, timeout: float | None = None) -> None:
        """Until the refill under way (if any) is done: for tests, and for a clean shutdown."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Stop after the spare being built (its transaction commits or rolls back), then release."""
        self._stop.set()
        self.wait(timeout)
        if self.dispose_engine:
            self.engine.dispose()
