"""Database URLs: pick the driver, and never show a password."""

from __future__ import annotations

import contextlib
import re
from urllib.parse import unquote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .errors import ConfigurationError

_SYNC_DRIVER = "postgresql+psycopg2"
_ASYNC_DRIVER = "postgresql+asyncpg"


_EXPECTED = "expected postgresql://user@host:port/dbname, with :password after the user if needed"


def parse(url: str | URL) -> URL:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        # the text may hold a password in a shape no pattern recognises: it is not repeated
        why = "its port is not a number" if isinstance(exc, ValueError) else "it can't be parsed"
        raise ConfigurationError(f"not a database URL ({why}): {_EXPECTED}") from None
    if parsed.drivername.split("+")[0] == "postgres":  # the common alias (Heroku, libpq URIs)
        parsed = parsed.set(drivername=parsed.drivername.replace("postgres", "postgresql", 1))
    if parsed.get_backend_name() != "postgresql":
        raise ConfigurationError(
            f"workspace-tool needs PostgreSQL, got a {parsed.get_backend_name()} URL: {redact(parsed)}"
        )
    return parsed


def sync_url(url: str | URL) -> URL:
    """The URL with the psycopg2 driver (SQLAlchemy 2.1 otherwise defaults to psycopg 3)."""
    return parse(url).set(drivername=_SYNC_DRIVER)


def async_url(url: str | URL) -> URL:
    return parse(url).set(drivername=_ASYNC_DRIVER)


def redact(url: str | URL) -> str:
    """The URL as text with its password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return redact_text(str(url))


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
            found.update(p for p in url.host.rpartition("@")[0].split("@") if len(p) >= 3)
        return sorted(found, key=len, reverse=True)
    with contextlib.suppress(Exception):
        password = make_url(url).password
        if password:
            found.add(password)
    rest = url.split("://", 1)[-1]
    userinfo = rest.rpartition("@")[0] if "@" in rest else ""
    if ":" in userinfo:
        raw = userinfo.split(":", 1)[1]
        for candidate in (raw, unquote(raw), *raw.split("@")):
            if len(candidate) >= 3:
                found.add(candidate)
    return sorted(found, key=len, reverse=True)  # longest first, so no fragment is left behind


def redact_text(message: str, *secrets: str | None) -> str:
    """Scrub passwords from free text: URL userinfo, password=..., and any known secret."""
    message = _PASSWORD_IN_URL.sub(r"\1***\3", message)
    message = _PASSWORD_KV.sub(r"\1***", message)
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return message
