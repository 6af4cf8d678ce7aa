"""The shared revision chain: its revisions in order, and plans of ranges, compiled once per process."""

from __future__ import annotations

import hashlib
import os
import re
import threading
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from alembic.config import Config
from alembic.script import Script
from alembic.util import CommandError
from sqlalchemy import Connection

from workspace_tool.chain.alembic_run import ALEMBIC_LOCK, BASE, StatementBuffer, run_env
from workspace_tool.chain.loading import load_script_directory, resolve_config_path
from workspace_tool.chain.plan import Plan, Step, compiled_statements
from workspace_tool.errors import ConfigurationError, UnknownRevision
from workspace_tool.vocabulary import Path as PlanPath
from workspace_tool.vocabulary import StepKind

# A revision opts out of compiling with a module-level ``workspace_online = True``; these calls in its
# source mean it needs a live connection (or behaves differently offline), so it is run online too.
_NEEDS_CONNECTION = re.compile(r"\bget_bind\s*\(|\bis_offline_mode\s*\(|\bget_context\s*\(")
# alembic.ini main option that turns the fast path off for a whole chain (every range runs online).
FAST_PATH_OPTION = "workspace_fast_path"
# The package's chain environment (what a chain's env.py runs), found without importing it.
_ALEMBIC_ENV = Path(__file__).resolve().parents[1] / "alembic_env.py"


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
        return bool(self._online) or self.plan(None, self.head).path is not PlanPath.FAST

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
        digest.update(Path(_ALEMBIC_ENV).read_bytes())  # the environment env.py runs
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
                    steps: tuple[Step, ...] = (
                        (Step(StepKind.ONLINE, from_rev, to_rev),) if self._between(from_rev, to_rev) else ()
                    )
                else:
                    steps = tuple(self._steps(from_rev, to_rev))
                plan = self._plans[key] = Plan(from_rev, to_rev, steps)
        return plan

    def claim_plan(self) -> Plan:
        """A new schema at head the other way: a spare schema this chain built at head, claimed from the
        warm pool and renamed (workspace_tool.pool); one CLAIM step."""
        return Plan(None, self.head, (Step(StepKind.CLAIM, None, self.head, spare_of=self.fingerprint),))

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
                steps.append(Step(StepKind.ONLINE, start, end))
                continue
            try:
                steps.append(Step(StepKind.COMPILED, start, end, self.compile_statements(start, end)))
            except Exception:  # some revision here can't render offline: find it, run only it online
                if len(revs) > 1 and self._find_unrenderable(revs, start, upgrading):
                    return self._steps(from_rev, to_rev)
                steps.append(Step(StepKind.ONLINE, start, end))
        return steps

    def _find_unrenderable(self, revs: list[str], start: str | None, upgrading: bool) -> bool:
        found = False
        current = start
        for rev in revs:
            script = self.script.get_revision(rev)
            assert script is not None
            after = rev if upgrading else self.resolve_down(script)
            try:
                self.compile_statements(current, after)
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

    def compile_statements(self, from_rev: str | None, to_rev: str | None) -> tuple[str, ...]:
        """Render from_rev -> to_rev offline as statements with no schema names (they run under a
        search_path); raises what the revision raises when it can't be rendered offline."""
        buffer = StatementBuffer()
        self._run_env(from_rev, to_rev, as_sql=True, attributes={"compile": True, "output_buffer": buffer})
        return compiled_statements(buffer.chunks, from_rev, to_rev)

    def compile(self, from_rev: str | None, to_rev: str | None) -> str:
        """from_rev -> to_rev rendered offline, as one script."""
        return "".join(s + "\n" for s in self.compile_statements(from_rev, to_rev))

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
        run_env(self.config, self.script, from_rev, to_rev, upgrading=upgrading, as_sql=as_sql, attributes=attributes)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("false", "no", "off", "0")
