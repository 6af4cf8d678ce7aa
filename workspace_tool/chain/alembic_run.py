"""Running Alembic's environment for a revision range: online on a connection, or offline to statements.

Alembic's ``op`` and ``context`` are process-global proxies, so everything that runs Alembic holds
``ALEMBIC_LOCK``.  Compiled statements need no Alembic at run time: they are what lets one process
migrate many schemas at once.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # Alembic is imported when a range runs, not by whoever imports the chain package
    from alembic.config import Config
    from alembic.script import ScriptDirectory

ALEMBIC_LOCK = threading.RLock()
BASE = "base"
_VERSION = re.compile(r"^__version__\s*=\s*[\"']([^\"']+)[\"']", re.MULTILINE)


def alembic_version() -> str:
    """The installed Alembic's version, without importing Alembic when it isn't loaded yet."""
    if "alembic" not in sys.modules:
        spec = importlib.util.find_spec("alembic")
        if spec is not None and spec.origin is not None:
            with contextlib.suppress(OSError):
                found = _VERSION.search(Path(spec.origin).read_text(encoding="utf-8"))
                if found:
                    return found.group(1)
    import alembic

    return str(alembic.__version__)


class StatementBuffer(io.StringIO):
    """Alembic's offline output buffer, kept one write at a time: Alembic writes each statement (and each
    comment) with one call, so the writes are the statements, with no SQL splitting to get wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[str] = []

    def write(self, text: str) -> int:
        self.chunks.append(text)
        return super().write(text)


def run_env(
    config: Config,
    script: ScriptDirectory,
    from_rev: str | None,
    to_rev: str | None,
    *,
    upgrading: bool,
    as_sql: bool,
    attributes: dict[str, Any],
) -> None:
    """Run the chain's env.py for from_rev -> to_rev with ``attributes`` in ``config.attributes``."""
    from alembic.runtime.environment import EnvironmentContext

    destination = to_rev or BASE

    def fn(rev: Any, context: Any) -> Any:
        if upgrading:
            return script._upgrade_revs(destination, rev)
        return script._downgrade_revs(destination, rev)

    with ALEMBIC_LOCK:
        config.attributes.clear()
        config.attributes.update(attributes)
        try:
            with EnvironmentContext(
                config,
                script,
                fn=fn,
                as_sql=as_sql,
                starting_rev=(from_rev or BASE) if as_sql else None,
                destination_rev=destination,
            ):
                script.run_env()
        finally:
            config.attributes.clear()
