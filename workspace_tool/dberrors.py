"""Turn driver and SQLAlchemy exceptions into WorkspaceErrors: one line, no password."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from types import TracebackType

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL

from workspace_tool.errors import DatabaseUnavailable, LockTimeout, MigrationFailed, PermissionDenied, WorkspaceError
from workspace_tool.urls import redact_text, url_secrets

# SQLSTATEs, each written here once.
LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout exceeded
LOCK_SQLSTATES = {LOCK_NOT_AVAILABLE}
DEADLOCK_DETECTED = "40P01"  # PostgreSQL rolled this transaction back to break a deadlock: run it again
INSUFFICIENT_PRIVILEGE = "42501"
INVALID_SCHEMA_NAME = "3F000"
UNDEFINED_TABLE = "42P01"
CONNECTION_SQLSTATE_CLASSES = ("08", "57P")  # connection exceptions, admin shutdown / crash
# Ours: a guarded transaction found the schema no longer as read (registry revision r0005's
# project_registry.expect_version raises it), and changed nothing. Class WT: no PostgreSQL class is named so.
STATE_CHANGED = "WT001"
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
    "could not translate host name",  # libpq: unknown host
    "invalid port number",  # libpq: a port outside 1-65535
)
_CONNECT_DENIED = "does not have CONNECT privilege"  # the login's DETAIL (libpq gives it no SQLSTATE)
_NAME = r'"?([^"\s]+)"?'
_DENIED_DATABASE = re.compile(r"permission denied for database " + _NAME)
_DENIED_EXTENSION = re.compile(r"permission denied to create extension " + _NAME)
_DENIED_SCHEMA = re.compile(r"permission denied for schema " + _NAME)
_DENIED_RELATION = re.compile(r"permission denied for (?:table|relation|sequence|view) " + _NAME)
_NOT_OWNER = re.compile(r"must be owner of (\w+(?: \w+)?) " + _NAME)
_SIMPLE_NAME = re.compile(r"[a-z_][a-z0-9_]*")
# How each kind of database says, in an error's message, that a node it needs could not be reached: a reader
# returns that node, named for a message, or None. Each flavor registers its own (``Flavor.unreachable_node``,
# when workspace_tool.flavor is imported, as everything that reaches a database does): a failure is
# translated here, below every layer, where no flavor is at hand (before any bootstrap, in any process).
NODE_ERROR_READERS: list[Callable[[str], str | None]] = []


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


def unreachable_node(message: str | None) -> str | None:
    """The node an error message says could not be reached, named for a message, if any (the coordinator's
    own session is fine then: the node's failure is the schema's, whichever node holds it)."""
    for read in NODE_ERROR_READERS:
        if (node := read(message or "")) is not None:
            return node
    return None


def is_connection_error(error: BaseException) -> bool:
    code = sqlstate(error) or ""
    if code.startswith(CONNECTION_SQLSTATE_CLASSES) or unreachable_node(str(getattr(error, "orig", None) or error)):
        return True
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, (ConnectionError, OSError)):
        return True
    message = str(getattr(error, "orig", None) or error).lower()
    return isinstance(error, sa_exc.OperationalError) and any(w in message for w in _CONNECTION_WORDS)


def server_message(error: BaseException) -> str:
    """The server's whole message, DETAIL included (psycopg2 puts it in the text, asyncpg in ``.detail``)."""
    orig = getattr(error, "orig", None) or error
    detail = getattr(orig, "detail", None)
    return f"{orig}\n{detail}" if isinstance(detail, str) else str(orig)


def is_permission_error(error: BaseException) -> bool:
    """SQLSTATE 42501 insufficient_privilege, or a login refused for want of CONNECT on the database."""
    return sqlstate(error) == INSUFFICIENT_PRIVILEGE or _CONNECT_DENIED in server_message(error)


def sql_name(name: str) -> str:
    """An identifier as a user would type it in SQL: bare when it can be, quoted otherwise."""
    return name if _SIMPLE_NAME.fullmatch(name) else '"' + name.replace('"', '""') + '"'


def role_phrase(role: str | None) -> str:
    """'role alice', for a message; the URL may name no user (libpq then logs in as the OS user)."""
    return f"role {role}" if role else "the role this URL logs in as"


def grantee(role: str | None) -> str:
    """The role to name in a GRANT: the URL's user, or a placeholder when the URL names none."""
    return sql_name(role) if role else "<your role>"


def grant_needed(detail: str, missing: str, grant: str, role: str | None, *, note: str = "") -> PermissionDenied:
    """A PermissionDenied that one GRANT (to ``grantee(role)``) fixes."""
    return PermissionDenied(detail, missing, f"run {grant}{note}", role=role, grant=grant if role else None)


def permission_denied(
    error: BaseException, detail: str, role: str | None = None, schema: str | None = None
) -> PermissionDenied:
    """What privilege is missing, read from the server's message, and the GRANT (or command) that gives it."""
    message = server_message(error)
    who, to = role_phrase(role), grantee(role)
    if match := _DENIED_DATABASE.search(message):
        database = sql_name(match[1])
        if _CONNECT_DENIED in message:
            missing = f"{who} may not connect to database {match[1]}"
            return grant_needed(detail, missing, f"GRANT CONNECT ON DATABASE {database} TO {to}", role)
        needed = f" (to create {schema})" if schema else ""
        missing = f"{who} may not create schemas in database {match[1]}{needed}"
        return grant_needed(detail, missing, f"GRANT CREATE ON DATABASE {database} TO {to}", role)
    if match := _DENIED_EXTENSION.search(message):
        missing = f"{who} may not create the {match[1]} extension, which workspace-tool needs"
        remedy = "have a superuser run `workspace-tool init` on this database first (it creates the extension)"
    elif match := _DENIED_SCHEMA.search(message):
        missing = f"{who} has no privilege on schema {match[1]}"
        remedy = (
            f"run as the role that owns {match[1]} (or GRANT that role TO {to}); GRANT USAGE ON SCHEMA "
            f"{sql_name(match[1])} TO {to} is enough to read it"
        )
    elif match := _DENIED_RELATION.search(message):
        missing = f"{who} may not use {match[1]}"
        remedy = f"grant {to} what it needs on {match[1]}, or run as a role that has it"
    elif match := _NOT_OWNER.search(message):
        missing = f"{who} does not own {match[1]} {match[2]}"
        remedy = f"run as the role that owns it (or GRANT that role TO {to})"
    else:
        missing = f"{who} lacks a privilege this needs"
        remedy = "grant it, or run as a role that has it"
    return PermissionDenied(detail, missing, remedy, role=role)


def translate(
    error: BaseException, schema: str | None = None, secrets: Sequence[str] = (), *, role: str | None = None
) -> WorkspaceError:
    """The WorkspaceError for a database failure while working on ``schema`` (or before any schema);
    ``secrets`` (see urls.url_secrets) are scrubbed from the driver's message too; ``role`` (the URL's
    user) is named in what to GRANT when a privilege is missing."""
    if isinstance(error, WorkspaceError):
        return error
    detail = redact_text(first_line(error), *secrets)
    if is_permission_error(error):
        return permission_denied(error, detail, role, schema)
    if is_connection_error(error):
        if node := unreachable_node(detail):
            working = f" while working on {schema} (its transaction was rolled back)" if schema else ""
            return DatabaseUnavailable(
                f"{node} is unreachable{working}: every schema change needs all the workers, "
                f"whichever holds the schema; start it, then rerun ({detail})"
            )
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


def translate_for(url: URL, error: BaseException, schema: str | None = None) -> WorkspaceError:
    """``translate`` for a failure on the database at ``url``: its password scrubbed, its user named."""
    return translate(error, schema, url_secrets(url), role=url.username)


def describe(exc: BaseException, schema: str | None = None, secrets: Sequence[str] = ()) -> str:
    """An error in one line for a per-schema report: the database's message plus its DETAIL and HINT, or
    ours (``Type: message``); no password (nor ``secrets``)."""
    if isinstance(exc, WorkspaceError) and not isinstance(exc, LockTimeout):
        return str(exc)
    orig = getattr(exc, "orig", None)
    if orig is not None or isinstance(exc, sa_exc.DBAPIError):
        lines = [line.strip() for line in str(orig or exc).splitlines() if line.strip()]
        kept = lines[:1] + [line for line in lines[1:] if line.startswith(("DETAIL:", "HINT:"))]
        return redact_text(" ".join(" ".join(line.split()) for line in kept), *secrets)
    if isinstance(exc, OSError):
        return str(translate(exc, schema, secrets))
    return redact_text(f"{type(exc).__name__}: {first_line(exc)}", *secrets)


def is_driver_error(exc: BaseException) -> bool:
    """A database failure to translate: SQLAlchemy's DBAPIError, a socket error, or asyncpg's own."""
    return isinstance(exc, (sa_exc.DBAPIError, OSError)) or type(exc).__module__.startswith("asyncpg")


class translating:
    """``with translating(url, schema):`` turns a database failure inside the block into the WorkspaceError
    that says what to do, with the URL's password scrubbed and its user named; WorkspaceErrors and bugs pass
    through unchanged. The one place driver errors become WorkspaceErrors."""

    def __init__(self, url: URL, schema: str | None = None) -> None:
        self.url = url
        self.schema = schema

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is not None and not isinstance(exc, WorkspaceError) and is_driver_error(exc):
            raise translate_for(self.url, exc, self.schema) from exc
