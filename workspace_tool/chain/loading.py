"""Loading a chain: find its alembic.ini, load its ScriptDirectory, and say in one line what is wrong."""

from __future__ import annotations

import configparser
import os
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from workspace_tool.errors import ConfigurationError

if TYPE_CHECKING:  # Alembic is imported when a chain is read through it (chain/index.py spares most reads)
    from alembic.config import Config
    from alembic.script import ScriptDirectory

CONFIG_ENV = "WORKSPACE_TOOL_CONFIG"
# alembic.ini [alembic]: a URL that bypasses the connection pooler (workspace_tool.flavor.pooler). Never recorded
# with the chain's graph (chain/index.py), which the other workspace_* options are: it may hold a password.
DIRECT_URL_OPTION = "workspace_direct_url"
# alembic.ini [alembic]: the chain's models at head (package.module:metadata), what autogenerate compares with.
MODELS_OPTION = "workspace_models"


def resolve_config_path(path: str | os.PathLike[str] | None = None) -> Path:
    candidate = Path(path) if path is not None else Path(os.environ.get(CONFIG_ENV) or "alembic.ini")
    if not candidate.is_file():
        how = (
            "the path given"
            if path is not None
            else (f"${CONFIG_ENV}" if os.environ.get(CONFIG_ENV) else "./alembic.ini")
        )
        raise ConfigurationError(
            f"alembic config not found: {candidate} ({how}); pass -c/--config PATH or set {CONFIG_ENV}"
        )
    return candidate.resolve()


def main_option(config_path: Path, name: str) -> str | None:
    """A main option of alembic.ini ([alembic]), read as Alembic reads it (``%(here)s`` is the file's
    directory) but without loading Alembic; None when it is not set or the file can't be read."""
    parser = configparser.ConfigParser(defaults={"here": str(config_path.parent)})
    try:
        parser.read(config_path, encoding="utf-8")
        value = parser.get("alembic", name, fallback=None)
    except (configparser.Error, OSError, UnicodeError):
        return None
    return value.strip() or None if value else None


def display_path(path: str | os.PathLike[str]) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # pragma: no cover - another drive on Windows
        return str(path)
    return str(path) if relative.startswith("..") else relative


_CHAIN_DIRECTORY = "the directory of the revision chain (the one holding env.py and versions/)"


def load_script_directory(config: Config, config_path: Path) -> ScriptDirectory:
    """The chain's ScriptDirectory with every revision file imported.  What Alembic would report as a
    command error or a traceback is a one-line ConfigurationError naming the file to fix: an alembic.ini
    without ``script_location``, a directory that does not exist, a revision that fails to import."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError, coerce_resource_to_filename

    section = config.config_ini_section
    try:
        has_section = config.file_config.has_section(section)
    except configparser.Error as exc:
        reason = str(exc).strip().splitlines()[0]
        raise ConfigurationError(f"cannot read {config_path} as an alembic.ini: {reason}") from None
    except UnicodeError as exc:  # Alembic reads it as UTF-8
        raise ConfigurationError(
            f"cannot read {config_path} as an alembic.ini: it is not UTF-8 text ({exc}); save it as UTF-8"
        ) from None
    location = config.get_main_option("script_location") if has_section else None
    if not location:
        where = f"in its [{section}] section" if has_section else f"(it has no [{section}] section)"
        raise ConfigurationError(
            f"{config_path} has no script_location {where}: set it to {_CHAIN_DIRECTORY}, "
            "e.g. script_location = %(here)s/migrations"
        )
    try:
        directory = Path(coerce_resource_to_filename(location))
    except ImportError as exc:  # a package:path location whose package is missing
        raise ConfigurationError(f"script_location = {location} in {config_path} can't be found: {exc}") from None
    if not (directory / "env.py").is_file():
        what = "has no env.py" if directory.is_dir() else "does not exist"
        raise ConfigurationError(
            f"script_location in {config_path} is {directory}, which {what}: set it to {_CHAIN_DIRECTORY}"
        )
    try:
        script = ScriptDirectory.from_config(config)
        script.get_heads()  # imports every revision file
    except CommandError as exc:
        raise ConfigurationError(f"cannot load the revision chain from {config_path}: {exc}") from None
    except Exception as exc:  # a revision's own code failed to import: name its file and line
        raise ConfigurationError(_revision_load_failure(exc, directory)) from exc
    return script


def _revision_load_failure(exc: Exception, directory: Path) -> str:
    """'cannot load revision FILE:LINE: Error: message' for an exception raised importing a revision."""
    root = directory.resolve()

    def inside(filename: str | None) -> bool:
        return bool(filename) and Path(str(filename)).resolve().is_relative_to(root)

    located: tuple[str, int] | None = None
    if isinstance(exc, SyntaxError) and inside(exc.filename):
        located, message = (str(exc.filename), exc.lineno or 0), str(exc.msg)
    else:
        message = str(exc)  # a SyntaxError in a module the revision imports names its own file and line
        for frame, line in traceback.walk_tb(exc.__traceback__):  # outermost first: keep the deepest
            if inside(frame.f_code.co_filename):
                located = (frame.f_code.co_filename, line)
    what = f"{type(exc).__name__}: {(message.strip().splitlines() or [''])[0]}"
    if located is None:
        return f"cannot load the revision chain in {display_path(directory)}: {what}"
    return f"cannot load revision {display_path(located[0])}:{located[1]}: {what}"
