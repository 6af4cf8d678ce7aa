"""SQL text written once, for every module that sends it: identifier quoting and literals, the advisory
locks (a project schema's, the registry's, the warm pool's; of a transaction or of a session), the
lock_timeout, the search_path, and ``DROP SCHEMA ... CASCADE``; and a script of the user's split into its
statements (``split_statements``), for a database that takes one statement at a time.

Most come as literal statements (for the compiled batches and scripts of the schema transaction, the plain
Alembic path and the registry bootstrap); the schema's lock also as a bound-parameter statement
(``LOCK_SQL``); ``lock_schema`` and ``drop_schema_cascade`` run theirs on a connection.
"""

from __future__ import annotations

import re
from functools import cache

from sqlalchemy import Connection, text

LOCK_NAMESPACE = "workspace_tool:"
REGISTRY_LOCK_KEY = LOCK_NAMESPACE + "#registry"
POOL_LOCK_KEY = LOCK_NAMESPACE + "#pool"  # one filler of the warm pool per database at a time


def quote_ident(name: str) -> str:
    """Quote an identifier for PostgreSQL (always, even when it would not need it)."""
    return '"' + name.replace('"', '""') + '"'


def sql_literal(value: str | None) -> str:
    """A SQL string literal (standard_conforming_strings), or NULL."""
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def _lock_id(key: str) -> str:
    """The 64-bit advisory lock id of ``key`` (a SQL expression: a literal or a parameter)."""
    return f"hashtextextended({key}, 0)"


def advisory_lock_sql(key: str, *, wait: bool = True) -> str:
    """The transaction-level advisory lock of ``key`` (a SQL expression: a literal or a parameter), held
    until the transaction ends: taken (waiting), or tried (``wait=False``: returns whether it was taken)."""
    return f"SELECT pg_{'' if wait else 'try_'}advisory_xact_lock({_lock_id(key)})"


def session_lock_sql(key: str, *, wait: bool = True) -> str:
    """The session-level advisory lock of ``key``, held across transactions until unlocked (or the session
    ends): taken (waiting), or tried (``wait=False``: returns whether it was taken)."""
    return f"SELECT pg_{'' if wait else 'try_'}advisory_lock({_lock_id(key)})"


def session_unlock_sql(key: str) -> str:
    return f"SELECT pg_advisory_unlock({_lock_id(key)})"


# One statement, so taking the lock is a single round trip.
LOCK_SQL = advisory_lock_sql(":key")


def lock_key(schema: str) -> str:
    """The advisory lock key of a schema: different schemas never wait for each other."""
    return LOCK_NAMESPACE + schema


def lock_id(schema: str) -> str:
    """The schema's advisory lock id as a SQL expression with a literal (for a function that takes the lock)."""
    return _lock_id(sql_literal(lock_key(schema)))


def lock_statement(schema: str, *, session: bool = False) -> str:
    """The schema's lock as a literal statement, for a batch or a script: the transaction's, or with
    ``session`` the session's (kept across transactions until ``unlock_statement``). Both are the same
    lock: another session waits for either, and the session holding one takes the other at once."""
    key = sql_literal(lock_key(schema))
    return session_lock_sql(key) if session else advisory_lock_sql(key)


def unlock_statement(schema: str) -> str:
    """Release the schema's session lock."""
    return session_unlock_sql(sql_literal(lock_key(schema)))


DEFAULT_LOCK_TIMEOUT_MS = 5000  # the longest wait for a lock a command takes, unless told


def lock_timeout_statement(timeout_ms: int, *, local: bool = True) -> str:
    """Bound every lock wait of the transaction (SQLSTATE 55P03 when exceeded); of the session with
    ``local=False``."""
    return f"SET {'LOCAL ' if local else ''}lock_timeout = '{int(timeout_ms)}ms'"


def lock_timeout_query(timeout_ms: int) -> str:
    """``lock_timeout_statement`` as a query (``set_config``, for the transaction): where a SET can't share a
    round trip with BEGIN (Citus), it bounds the wait for the schema's lock in BEGIN's round trip. Citus
    never passes it on to its workers (it passes SET statements only)."""
    return f"SELECT set_config('lock_timeout', '{int(timeout_ms)}ms', true)"


def search_path_sql(schema: str, extension_schema: str, *, local: bool = True) -> str:
    """The project schema first, then only the schema holding the vector extension: for the
    transaction, or for the session with ``local=False``."""
    path = [quote_ident(schema)]
    if extension_schema not in (schema, "pg_catalog"):
        path.append(quote_ident(extension_schema))
    return f"SET {'LOCAL ' if local else ''}search_path TO " + ", ".join(path)


def drop_schema_cascade(conn: Connection, schema: str) -> None:
    """Drop a schema and everything in it, if it is there, in conn's transaction: the one way any schema
    (a project's, a spare, a scratch schema) is dropped."""
    conn.execute(text(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE"))


def lock_schema(conn: Connection, schema: str) -> None:
    """Per-schema transaction-level advisory lock: other projects are never blocked."""
    conn.execute(text(LOCK_SQL), {"key": lock_key(schema)})


@cache
def _patterns() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """A dollar quote's opening tag ($$ or $tag$), and a word (an identifier or keyword: may hold $ and
    digits). Compiled on first use: their ranges up to U+FFFF take 10-20 ms to compile, which every
    process importing this module (each fleet command's) would pay."""
    dollar_tag = re.compile(r"\$(?:[A-Za-z_\u0080-\uffff][A-Za-z_0-9\u0080-\uffff]*)?\$")
    word = re.compile(r"[A-Za-z_\u0080-\uffff][A-Za-z_0-9$\u0080-\uffff]*")
    return dollar_tag, word


def split_statements(script: str) -> list[str]:
    """The statements of a SQL script, as psql sends them one at a time: split at each semicolon that is
    not inside a string ('...', E'...' with its backslash escapes, $tag$...$tag$), a quoted identifier, a
    comment (-- and nested /* */), parentheses, or a BEGIN ATOMIC ... END body (counted as psql counts it:
    a BEGIN or CASE after a statement's first word opens a block, an END closes one). Each statement as
    written (its comments kept, blanks around it and its semicolon not); one of nothing but comments and
    blanks is left out."""
    dollar_tag, word_pattern = _patterns()
    statements: list[str] = []
    start = i = parens = blocks = words = 0
    meaningful = False
    n = len(script)
    while i < n:
        char = script[i]
        if script.startswith("--", i):
            newline = script.find("\n", i)
            i = n if newline < 0 else newline + 1
            continue
        if script.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if script.startswith("/*", i) or script.startswith("*/", i):
                    depth += 1 if script[i] == "/" else -1
                    i += 2
                else:
                    i += 1
            continue
        meaningful = meaningful or not (char.isspace() or char == ";")
        word = word_pattern.match(script, i) if char.isalpha() or char == "_" or char >= "\u0080" else None
        dollar = dollar_tag.match(script, i) if char == "$" else None
        if word is not None:
            words += 1
            name = word.group().lower()
            if name in ("begin", "case") and words > 1:
                blocks += 1
            elif name == "end" and blocks:
                blocks -= 1
            i = word.end()
        elif char == "'":
            escapes = i > 0 and script[i - 1] in "eE" and (i < 2 or not _is_word_char(script[i - 2]))
            i = _string_end(script, i, escapes)
        elif char == '"':
            close = script.find('"', i + 1)  # a doubled "" inside: two quoted parts back to back, the same end
            i = n if close < 0 else close + 1
        elif dollar is not None:
            close = script.find(dollar.group(), dollar.end())
            i = n if close < 0 else close + len(dollar.group())
        else:
            if char == "(":
                parens += 1
            elif char == ")":
                parens = max(parens - 1, 0)
            elif char == ";" and not parens and not blocks:
                if meaningful:
                    statements.append(script[start:i].strip())
                start, words, blocks, meaningful = i + 1, 0, 0, False
            i += 1
    if meaningful:
        statements.append(script[start:].strip())
    return statements


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char in "_$" or char >= "\u0080"


def _string_end(script: str, i: int, escapes: bool) -> int:
    """Past the string literal opening at ``i`` (a doubled '' inside it; with ``escapes``, a backslash too)."""
    n, j = len(script), i + 1
    while j < n:
        if escapes and script[j] == "\\":
            j += 2
        elif script[j] == "'":
            if script.startswith("''", j):
                j += 2
            else:
                return j + 1
        else:
            j += 1
    return n
