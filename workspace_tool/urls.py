"""Database URLs: pick the driver, and never show a password."""

from __future__ import annotations

import contextlib
import re
from urllib.parse import unquote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from workspace_tool.errors import ConfigurationError

DIRECT_URL_ENV = "WORKSPACE_TOOL_DIRECT_URL"  # a URL that bypasses the pooler (see workspace_tool.flavor.pooler)
_SYNC_DRIVER = "postgresql+psycopg2"
_ASYNC_DRIVER = "postgresql+asyncpg"


_EXPECTED = "expected postgresql://user@host:port/dbname, with :password after the user if needed"
_MAX_PORT = 65535


def _not_a_url(why: str) -> ConfigurationError:
    # the text may hold a password in a shape no pattern recognises: it is not repeated
    return ConfigurationError(f"not a database URL ({why}): {_EXPECTED}")


def parse(url: str | URL) -> URL:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        raise _not_a_url("its port is not a number" if isinstance(exc, ValueError) else "it can't be parsed") from None
    if parsed.drivername.split("+")[0] == "postgres":  # the common alias (Heroku, libpq URIs)
        parsed = parsed.set(drivername=parsed.drivername.replace("postgres", "postgresql", 1))
    if parsed.get_backend_name() != "postgresql":
        raise ConfigurationError(
            f"workspace-tool needs PostgreSQL, got a {parsed.get_backend_name()} URL: {redact(parsed)}"
        )
    return check_url(parsed)


def check_url(url: URL) -> URL:
    """Refuse, before any connection, a URL no server can be reached at: a host holding an '@' (the rest
    of a password or user name with an unencoded '@', which libpq would look up as a host name), or a
    port outside 1-65535."""
    if url.host and "@" in url.host:
        raise _not_a_url("it has more than one '@': write an '@' in the user name or password as %40")
    if url.port is not None and not 0 < url.port <= _MAX_PORT:
        raise _not_a_url(f"its port {url.port} is not between 1 and {_MAX_PORT}")
    return url


def sync_url(url: str | URL) -> URL:
    """The URL with the psycopg2 driver (SQLAlchemy 2.1 otherwise defaults to psycopg 3)."""
    return parse(url).set(drivername=_SYNC_DRIVER)


def async_url(url: str | URL) -> URL:
    return parse(url).set(drivername=_ASYNC_DRIVER)


def redact(url: str | URL) -> str:
    """The URL as text with its password replaced by ***, every part of it (see url_secrets)."""
    try:
        return redact_text(make_url(url).render_as_string(hide_password=True), *url_secrets(url))
    except (ArgumentError, ValueError):
        return redact_text(str(url), *url_secrets(url))


_PASSWORD_IN_URL = re.compile(r"(://[^:/@\s]*:)([^@\s]*)(@)")
_PASSWORD_KV = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def url_secrets(url: str | URL | None) -> list[str]:
    """Every form of a URL's password worth scrubbing from text: as parsed, as written (percent-encoded
    or not), and, when it holds an unencoded '@', each part (libpq then reads the rest as the host)."""
    if url is None:
        return []
    found: set[str] = set()
    if isinstance(url, URL):
        if url.password:
            found.add(str(url.password))
        if url.host and "@" in url.host:  # the rest of a password holding an unencoded '@'
            found.update(url.host.rpartition("@")[0].split("@"))
    else:
        with contextlib.suppress(Exception):
            found.update(url_secrets(make_url(url)))
        rest = url.split("://", 1)[-1]
        userinfo = rest.rpartition("@")[0] if "@" in rest else ""
        if ":" in userinfo:
            raw = userinfo.split(":", 1)[1]
            found.update((raw, unquote(raw), *raw.split("@")))
    found.discard("")
    return sorted(found, key=len, reverse=True)  # longest first, so no fragment is left behind


# A secret shorter than this is scrubbed only where it stands alone ("ab" in `"ab@host"`, not in
# "database"): replacing it everywhere would garble the message and give it away by the gaps.
_SHORT_SECRET = 6


def redact_text(message: str, *secrets: str | None) -> str:
    """Scrub passwords from free text: URL userinfo, password=..., and any known secret."""
    message = _PASSWORD_IN_URL.sub(r"\1***\3", message)
    message = _PASSWORD_KV.sub(r"\1***", message)
    for secret in secrets:
        if not secret:
            continue
        if len(secret) >= _SHORT_SECRET:
            message = message.replace(secret, "***")
        else:
            message = re.sub(rf"(?<!\w){re.escape(secret)}(?!\w)", "***", message)
    return message
