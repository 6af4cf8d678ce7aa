"""The Alembic glue: load the chain once, plan a revision range, compile it to SQL, or run it online.

Alembic's ``op`` and ``context`` are process-global proxies, so everything here that runs Alembic holds
``ALEMBIC_LOCK``.  Compiled SQL needs no Alembic at run time: it is what lets one process migrate many
schemas at once.
"""

from __future__ import annotations

import configparser
import hashlib
import io
import os
import re
import threading
import traceback
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import Script, ScriptDirectory
from alembic.util import CommandError, coerce_resource_to_filename
from sqlalchemy import Connection

from workspace_tool import alembic_env
from workspace_tool.errors import ConfigurationError, UnknownRevision

ALEMBIC_LOCK = threading.RLock()
CONFIG_ENV = "WORKSPACE_TOOL_CONFIG"
BASE = "base"

# A revision opts out of compiling with a module-level ``workspace_online = True``; these calls in its
# source mean it needs a live connection (or behaves differently offline), so it is run online too.
_NEEDS_CONNECTION = re.compile(r"\bget_bind\s*\(|\bis_offline_mode\s*\(|\bget_context\s*\(")
# alembic.ini main option that turns the fast path off for a whole chain (every range runs online).
FAST_PATH_OPTION = "workspace_fast_path"
# The version table, as Alembic renders it in offline mode at the start of a range from base, and the
# DROP that Alembic < 1.17 appends to a range ending at base (online mode never drops it: alembic #1822).
_CREATE_VERSION_TABLE = re.compile(r"^CREATE TABLE (alembic_version \()", re.MULTILINE)
_DROP_VERSION_TABLE = re.compile(r"^DROP TABLE alembic_version;[ \t]*\n?", re.MULTILINE)


@dataclass(frozen=True)
class Step:
    """Part of a range: either compiled SQL to replay, or a range Alembic must run online."""

    from_rev: str | None
    to_rev: str | None
    sql: str | None  # None: run online

    @property
    def online(self) -> bool:
        return self.sql is None


@dataclass(frozen=True)
class Plan:
    from_rev: str | None
    to_rev: str | None
    steps: tuple[Step, ...]

    @property
    def path(self) -> str:
        """'fast', 'online', 'mixed', or 'none' for an empty range."""
        kinds = {s.online for s in self.steps}
        if not kinds:
            return "none"
        if kinds == {False}:
            return "fast"
        return "online" if kinds == {True} else "mixed"

    @property
    def sql(self) -> str | None:
        """The whole range as one batch, when all of it compiled."""
        if any(s.online for s in self.steps):
            return None
        return "".join(s.sql or "" for s in self.steps)


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
    section = config.config_ini_section
    try:
        has_section = config.file_config.has_section(section)
    except configparser.Error as exc:
        reason = str(exc).strip().splitlines()[0]
        raise ConfigurationError(f"cannot read {config_path} as an alembic.ini: {reason}") from None
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


class Chain:
    """One shared revision chain: its ScriptDirectory, head, and a cache of compiled ranges."""

    _loaded: ClassVar[dict[Path, Chain]] = {}
    _loaded_lock = threading.Lock()

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.config = Config(str(config_path))
        self.script = load_script_directory(self.config, config_path)
        heads = self.script.get_heads()
        if len(heads) != 1:
            raise ConfigurationError(
                f"the revision chain in {self.script.dir} has {len(heads)} heads ({', '.join(sorted(heads))}); "
                "it must have exactly one: merge them with `alembic merge heads`"
                if heads
                else f"the revision chain in {self.script.dir} has no revisions"
            )
        self.head: str = heads[0]
        self._order = [s.revision for s in reversed(list(self.script.walk_revisions("base", "heads")))]
        self._position = {rev: i for i, rev in enumerate(self._order)}
        self.fast_path_enabled = _truthy(self.config.get_main_option(FAST_PATH_OPTION, "true"))
        self._online = {
            rev
            for rev in self._order
            if not self.fast_path_enabled or self._needs_online(self.script.get_revision(rev))
        }
        self._plans: dict[tuple[str | None, str | None, bool], Plan] = {}
        self._unrenderable: set[tuple[str, bool]] = set()  # (revision, upgrading) that failed to compile

    @classmethod
    def load(cls, config_path: str | os.PathLike[str] | None = None) -> Chain:
        """The chain for an alembic.ini, loaded once per process."""
        path = resolve_config_path(config_path)
        with cls._loaded_lock:
            chain = cls._loaded.get(path)
            if chain is None:
                chain = cls._loaded[path] = cls(path)
            return chain

    @classmethod
    def forget(cls, config_path: str | os.PathLike[str]) -> None:
        """Make the next ``load`` of this alembic.ini read the chain again (after a revision was added)."""
        with cls._loaded_lock:
            cls._loaded.pop(Path(config_path).resolve(), None)

    # ----------------------------------------------------------------- revisions
    @property
    def revisions(self) -> list[str]:
        """All revisions, base first."""
        return list(self._order)

    @property
    def has_online(self) -> bool:
        """True if some revision must run online (through Alembic, under its process-global lock)."""
        return bool(self._online) or self.plan(None, self.head).path != "fast"

    def knows(self, revision: str | None) -> bool:
        return revision is None or revision in self._position

    def check_known(self, schema: str, revision: str | None) -> None:
        if not self.knows(revision):
            raise UnknownRevision(schema, str(revision))

    def resolve(self, revision: str | None) -> str | None:
        """'head', 'base', a full or partial revision id -> a revision id (None for base)."""
        if revision is None or revision == BASE:
            return None
        if revision == "head" or revision == "heads":
            return self.head
        try:
            script = self.script.get_revision(revision)
        except CommandError as exc:
            raise ConfigurationError(f"unknown revision {revision!r}: {exc}") from None
        if script is None:
            return None
        return script.revision

    def position(self, revision: str | None) -> int:
        """0 for base, i+1 for the i-th revision."""
        return 0 if revision is None else self._position[revision] + 1

    def is_upgrade(self, from_rev: str | None, to_rev: str | None) -> bool:
        return self.position(to_rev) >= self.position(from_rev)

    def _between(self, from_rev: str | None, to_rev: str | None) -> list[str]:
        """Revisions applied (upgrade) or undone (downgrade) going from_rev -> to_rev, in order."""
        lo, hi = sorted((self.position(from_rev), self.position(to_rev)))
        revs = self._order[lo:hi]
        return revs if self.is_upgrade(from_rev, to_rev) else list(reversed(revs))

    # ------------------------------------------------------------------ planning
    def renders_offline(self, revision: str) -> bool:
        """Whether compiling this revision gives the SQL it runs, whatever the chain's fast-path setting:
        False for a revision that opts out (``workspace_online``) or reads the database (``get_bind()``)."""
        return not self._needs_online(self.script.get_revision(revision))

    def _needs_online(self, script: Script | None) -> bool:
        if script is None or script.module is None:
            return False
        if getattr(script.module, "workspace_online", False):
            return True
        try:
            source = Path(script.path).read_text(encoding="utf-8")
        except OSError:
            return True
        return bool(_NEEDS_CONNECTION.search(source))

    @cached_property
    def fingerprint(self) -> str:
        """A digest of every revision file, env.py and the environment it runs, read on first use: it
        names the chain a verification report proved (compiled ranges are cached per loaded chain)."""
        digest = hashlib.sha256()
        for rev in self._order:
            script = self.script.get_revision(rev)
            assert script is not None
            digest.update(rev.encode())
            digest.update(Path(script.path).read_bytes())
        digest.update((Path(self.script.dir) / "env.py").read_bytes())
        digest.update(Path(alembic_env.__file__).read_bytes())  # the environment env.py runs
        return digest.hexdigest()[:16]

    def plan(self, from_rev: str | None, to_rev: str | None, *, online: bool = False) -> Plan:
        """Split from_rev -> to_rev into compiled and online steps; cached per process.

        ``online=True`` plans the whole range as one online step (everything through Alembic): the
        reference the fast path is verified against, and a way to bypass it."""
        key = (from_rev, to_rev, online)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        with ALEMBIC_LOCK:
            plan = self._plans.get(key)
            if plan is None:
                if online:
                    steps: tuple[Step, ...] = (Step(from_rev, to_rev, None),) if self._between(from_rev, to_rev) else ()
                else:
                    steps = tuple(self._steps(from_rev, to_rev))
                plan = self._plans[key] = Plan(from_rev, to_rev, steps)
        return plan

    def _steps(self, from_rev: str | None, to_rev: str | None) -> list[Step]:
        """Maximal runs of compilable revisions become one compiled step each; the rest run online.

        A run that fails to render offline is split: each of its revisions is rendered alone, and only
        those that fail (remembered per direction) run online."""
        upgrading = self.is_upgrade(from_rev, to_rev)
        segments: list[tuple[str | None, str | None, bool, list[str]]] = []
        current = from_rev
        for rev in self._between(from_rev, to_rev):
            script = self.script.get_revision(rev)
            assert script is not None
            after = rev if upgrading else self.resolve_down(script)
            online = rev in self._online or (rev, upgrading) in self._unrenderable
            if segments and segments[-1][2] == online:
                start, _, _, revs = segments[-1]
                segments[-1] = (start, after, online, [*revs, rev])
            else:
                segments.append((current, after, online, [rev]))
            current = after
        steps: list[Step] = []
        for start, end, online, revs in segments:
            if online:
                steps.append(Step(start, end, None))
                continue
            try:
                steps.append(Step(start, end, self.compile(start, end)))
            except Exception:  # some revision here can't render offline: find it, run only it online
                if len(revs) > 1 and self._find_unrenderable(revs, start, upgrading):
                    return self._steps(from_rev, to_rev)
                steps.append(Step(start, end, None))
        return steps

    def _find_unrenderable(self, revs: list[str], start: str | None, upgrading: bool) -> bool:
        found = False
        current = start
        for rev in revs:
            script = self.script.get_revision(rev)
            assert script is not None
            after = rev if upgrading else self.resolve_down(script)
            try:
                self.compile(current, after)
            except Exception:
                self._unrenderable.add((rev, upgrading))
                found = True
            current = after
        return found

    @staticmethod
    def resolve_down(script: Script) -> str | None:
        down = script.down_revision
        if isinstance(down, (tuple, list)):
            raise ConfigurationError(f"revision {script.revision} is a merge point; downgrade across it by hand")
        return down

    def compile(self, from_rev: str | None, to_rev: str | None) -> str:
        """Render from_rev -> to_rev as SQL with no schema names (it runs under a search_path)."""
        buffer = io.StringIO()
        self._run_env(from_rev, to_rev, as_sql=True, attributes={"compile": True, "output_buffer": buffer})
        return align_version_table(buffer.getvalue(), from_rev, to_rev)

    # -------------------------------------------------------------------- online
    def run_online(
        self, conn: Connection, schema: str, extension_schema: str, from_rev: str | None, to_rev: str | None
    ) -> None:
        """Run from_rev -> to_rev through Alembic on conn, in the caller's transaction."""
        self._run_env(
            from_rev,
            to_rev,
            as_sql=False,
            attributes={"connection": conn, "schema": schema, "extension_schema": extension_schema},
        )

    def _run_env(self, from_rev: str | None, to_rev: str | None, *, as_sql: bool, attributes: dict[str, Any]) -> None:
        upgrading = self.is_upgrade(from_rev, to_rev)
        destination = to_rev or BASE

        def fn(rev: Any, context: Any) -> Any:
            if upgrading:
                return self.script._upgrade_revs(destination, rev)
            return self.script._downgrade_revs(destination, rev)

        with ALEMBIC_LOCK:
            self.config.attributes.clear()
            self.config.attributes.update(attributes)
            try:
                with EnvironmentContext(
                    self.config,
                    self.script,
                    fn=fn,
                    as_sql=as_sql,
                    starting_rev=(from_rev or BASE) if as_sql else None,
                    destination_rev=destination,
                ):
                    self.script.run_env()
            finally:
                self.config.attributes.clear()


def align_version_table(sql: str, from_rev: str | None, to_rev: str | None) -> str:
    """Make compiled SQL treat the version table as Alembic online does.

    Online, ``downgrade base`` leaves an empty alembic_version table and an upgrade from base creates
    it only if missing.  Offline, Alembic always emits CREATE TABLE for a range from base, and before
    1.17 a DROP TABLE for a range ending at base.  So a range from base creates the table IF NOT EXISTS
    (a schema downgraded to base, by us or by plain Alembic, still has it) and a range to base keeps it.
    """
    if from_rev is None:
        sql = _CREATE_VERSION_TABLE.sub(r"CREATE TABLE IF NOT EXISTS \1", sql, count=1)
    if to_rev is None:
        sql = _DROP_VERSION_TABLE.sub("", sql)
    return sql


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("false", "no", "off", "0")
