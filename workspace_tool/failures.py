"""Turn driver and SQLAlchemy exceptions into WorkspaceErrors: one line, no password."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import exc as sa_exc

from .errors import DatabaseUnavailable, LockTimeout, MigrationFailed, WorkspaceError
from .urls import redact_text

LOCK_SQLSTATES = {"55P03"}  # lock_not_available (lock_timeout)
CONNECTION_SQLSTATE_CLASSES = ("08", "57P")  # connection exceptions, admin shutdown / crash
_CONNECTION_WORDS = (
    "server closed the connection",
    "connection refused",
    "could not connect",
    "connection is closed",
    "terminating connection",
    "connection was closed",
    "connection to server",
    "no such file or directory",
    "password authentication failed",
    "does not exist",
)


def sqlstate(error: BaseException) -> str | None:
    orig = getattr(error, "orig", None) or error
    for attr in ("pgcode", "sqlstate"):
        code = getattr(orig, attr, None)
        if isinstance(code, str):
            return code
    return None


def first_line(error: BaseException) -> str:
    orig = getattr(error, "orig", None) or error
    lines = [line.strip() for line in str(orig).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(orig).__name__
    return redact_text(text)


def is_connection_error(error: BaseException) -> bool:
    code = sqlstate(error) or ""
    if code.startswith(CONNECTION_SQLSTATE_CLASSES):
        return True
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, (ConnectionError, OSError)):
        return True
    message = str(getattr(error, "orig", None) or error).lower()
    return isinstance(error, sa_exc.OperationalError) and any(w in message for w in _CONNECTION_WORDS)


def translate(error: BaseException, schema: str | None = None, secrets: Sequence[str] = ()) -> WorkspaceError:
    """The WorkspaceError for a database failure while working on ``schema`` (or before any schema);
    ``secrets`` (see urls.url_secrets) are scrubbed from the driver's message too."""
    if isinstance(error, WorkspaceError):
        return error
    detail = redact_text(first_line(error), *secrets)
    if is_connection_error(error):
        if schema:
            return DatabaseUnavailable(
                f"database connection failed while working on {schema} (its transaction was rolled back; "
                f"rerun): {detail}"
            )
        return DatabaseUnavailable(
            f"database connection failed: {detail} (check that the server is up and the URL is right: "
            "--database-url or $WORKSPACE_TOOL_DATABASE_URL)"
        )
    if schema is None:
        return DatabaseUnavailable(f"database error: {detail}")
    if sqlstate(error) in LOCK_SQLSTATES:
        return LockTimeout(schema, detail)
    return MigrationFailed(schema, detail)
