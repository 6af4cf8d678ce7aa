"""Database URLs: pick the driver, and never show a password."""

from __future__ import annotations

import re

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .errors import ConfigurationError

_SYNC_DRIVER = "postgresql+psycopg2"
_ASYNC_DRIVER = "postgresql+asyncpg"


def parse(url: str | URL) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigurationError(f"not a database URL: {redact_text(str(url))!r}") from None
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


def redact_text(message: str, *secrets: str | None) -> str:
    """Scrub passwords from free text: URL userinfo, password=..., and any known secret."""
    message = _PASSWORD_IN_URL.sub(r"\1***\3", message)
    message = _PASSWORD_KV.sub(r"\1***", message)
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return message
