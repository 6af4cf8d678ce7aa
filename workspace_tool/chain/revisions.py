"""The shared revision chain: its revisions in order, and plans of ranges, compiled once per process."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
import traceback
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from workspace_tool.chain import index, plan_record
from workspace_tool.chain.alembic_run import ALEMBIC_LOCK, BASE, StatementBuffer, run_env
from workspace_tool.chain.fresh import collapsed
from workspace_tool.chain.loading import DIRECT_URL_OPTION, display_path, load_script_directory, resolve_config_path
from workspace_tool.chain.plan import Path as PlanPath
from workspace_tool.chain.plan import Plan, Step, StepKind, compiled_statements
from workspace_tool.errors import ConfigurationError, UnknownRevision
from workspace_tool.namespace import REGISTRY_SCHEMA_OPTION, SCHEMA_PREFIX_OPTION, Namespace, from_options

if TYPE_CHECKING:  # Alembic is imported when the chain is read through it, or a range compiled or run
    from alembic.config import Config
    from alembic.script import Script, ScriptDirectory
    from sqlalchemy import Connection

# A revision opts out of compiling with a module-level ``workspace_online = True``; these calls in its
# source mean it needs a live connection (or behaves differently offline), so it is run online too.
_NEEDS_CONNECTION = re.compile(r"\bget_bind\s*\(|\bis_offline_mode\s*\(|\bget_context\s*\(")
# A revision that can't run in a transaction says so with a module-level ``workspace_transactional =
# False``, or uses Alembic's autocommit_block(); ``op.get_context().autocommit_block()`` alone renders
# offline (with the compile settings, Alembic emits nothing for the block itself), so it is compiled.
NON_TRANSACTIONAL_ATTRIBUTE = "workspace_transactional"
_AUTOCOMMIT_BLOCK = re.compile(r"\bautocommit_block\s*\(")
_CONTEXT_FOR_AUTOCOMMIT = re.compile(r"\bget_context\s*\(\s*\)\s*\.\s*autocommit_block\s*\(")
# alembic.ini main option that turns the fast path off for a whole chain (every range runs online).
FAST_PATH_OPTION = "workspace_fast_path"
WORKSPACE_OPTION_PREFIX = "workspace_"  # the main options a chain's graph records (read without Alembic)
# The package's chain environment (what a chain's env.py runs), found without importing it.
_ALEMBIC_ENV = Path(__file__).resolve().parents[1] / "alembic_env.py"
log = logging.getLogger(__name__)


class Chain:
    """One shared revision chain: its graph (revisions in order, head), a cache of compiled ranges, and
    Alembic's ScriptDirectory, read on first use: the graph comes from chain/index.py when the chain's
    files haven't changed since a process last read it."""

    _loaded: ClassVar[dict[Path, Chain]] = {}
    _loaded_lock = threading.Lock()

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self._config: Config | None = None
        self._script: ScriptDirectory | None = None
        started = time.perf_counter()
        graph = index.read(config_path)
        how = "recorded"
        if graph is None:
            graph = self._read_graph()
            index.write(config_path, graph)
            how = "read through Alembic"
        log.debug(
            "chain %s: %d revision(s), head %s (%s, %.0f ms)",
            config_path,
            len(graph.order),
            graph.head,
            how,
            (time.perf_counter() - started) * 1000,
        )
        self.head: str = graph.head
        self._order = list(graph.order)
        self._position = {rev: i for i, rev in enumerate(self._order)}
        self._options = dict(graph.options)
        self.fast_path_enabled = _truthy(self.option(FAST_PATH_OPTION, "true"))
        # where its projects and registry live (workspace_registry_schema, workspace_schema_prefix)
        self.namespace: Namespace = from_options(
            self._options.get(REGISTRY_SCHEMA_OPTION), self._options.get(SCHEMA_PREFIX_OPTION), config_path
        )
        self._online = set(graph.online)
        self._outside = set(graph.outside)
        # every revision file, env.py and the environment it runs: names the chain a verification report
        # proved and keys the reference catalog stored for `check`
        self.fingerprint = graph.fingerprint
        self._plans: dict[tuple[str | None, str | None, bool], Plan] = {}
        self._fresh: dict[str | None, Plan] = {}  # fresh_plan's, per target
        self._plan_record = plan_record.record_path(self.fingerprint, self._options)  # ranges planned before
        self._unrenderable: set[tuple[str, bool]] = set()  # (revision, upgrading) that failed to compile

    @property
    def config(self) -> Config:
        with ALEMBIC_LOCK:
            if self._config is None:
                from alembic.config import Config

                self._config = Config(str(self.config_path))
            return self._config

    @property
    def script(self) -> ScriptDirectory:
        """Alembic's view of the chain, with every revision file imported (on first use)."""
        with ALEMBIC_LOCK:
            if self._script is None:
                self._script = load_script_directory(self.config, self.config_path)
            return self._script

    def _read_graph(self) -> index.Graph:
        """The graph as Alembic reads it; one-line errors for a chain that doesn't load or has no one head."""
        script = self.script
        heads = script.get_heads()
        if len(heads) != 1:
            raise ConfigurationError(
                f"the revision chain in {script.dir} has {len(heads)} heads ({', '.join(sorted(heads))}); "
                "it must have exactly one: merge them with `alembic merge heads`"
                if heads
                else f"the revision chain in {script.dir} has no revisions"
            )
        order = tuple(s.revision for s in reversed(list(script.walk_revisions("base", "heads"))))
        options = {
            name: value
            for name, value in self.config.get_section(self.config.config_ini_section, {}).items()
            if name.startswith(WORKSPACE_OPTION_PREFIX) and name != DIRECT_URL_OPTION
        }
        fast_path_enabled = _truthy(options.get(FAST_PATH_OPTION))
        online = frozenset(
            rev for rev in order if not fast_path_enabled or self._needs_online(script.get_revision(rev))
        )
        outside = frozenset(rev for rev in order if self._declares_outside(script.get_revision(rev)))
        files = [Path(self._revision_script(rev).path) for rev in order]
        env = Path(script.dir) / "env.py"
        digest = hashlib.sha256()
        for rev, path in zip(order, files, strict=True):
            digest.update(rev.encode())
            digest.update(path.read_bytes())
        digest.update(env.read_bytes())
        digest.update(Path(_ALEMBIC_ENV).read_bytes())  # the environment env.py runs
        return index.Graph(
            head=heads[0],
            order=order,
            online=online,
            outside=outside,
            options=options,
            fingerprint=digest.hexdigest()[:16],
            sources=tuple(str(p) for p in (self.config_path, env, Path(_ALEMBIC_ENV), *files)),
            directories=tuple(str(d) for d in map(Path, script._version_locations) if d.is_dir()),
            recursive=bool(script.recursive_version_locations),
        )

    def option(self, name: str, default: str) -> str:
        """A ``workspace_*`` main option of alembic.ini (recorded with the graph: no Alembic needed)."""
        assert name.startswith(WORKSPACE_OPTION_PREFIX), name
        return self._options.get(name) or default

    def whole_number(self, name: str, default: int, rule: str, *, at_least: int = 0) -> int:
        """A ``workspace_*`` option that is a whole number, ``at_least`` or more (``default`` when unset);
        anything else is a ConfigurationError naming the option, its value, this alembic.ini and ``rule``."""
        value = self.option(name, str(default))
        try:
            number = int(value.strip())
        except ValueError:
            number = at_least - 1
        if number < at_least:
            raise ConfigurationError(f"{name} = {value!r} in {self.config_path}: {rule}")
        return number

    def raised_in(self, exc: BaseException) -> tuple[str, str] | None:
        """(revision, 'FILE:LINE, in FUNCTION') of the deepest frame of ``exc``'s traceback that runs a
        revision file of this chain (where the revision's own code raised), or None."""
        files = {}
        for rev in self._order:
            script = self.script.get_revision(rev)
            if script is not None and script.path:
                files[Path(script.path).resolve()] = rev
        found = None
        for frame, line in traceback.walk_tb(exc.__traceback__):  # outermost first: keep the deepest
            revision = files.get(Path(frame.f_code.co_filename).resolve())
            if revision is not None:
                found = (revision, f"{display_path(frame.f_code.co_filename)}:{line}, in {frame.f_code.co_name}")
        return found

    def _revision_script(self, revision: str) -> Script:
        script = self.script.get_revision(revision)
        assert script is not None
        return script

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
        if revision in self._position:
            return revision
        if not revision:  # Alembic asserts on it
            raise ConfigurationError("no revision given: name one (an id, a unique prefix of one, head or base)")
        from alembic.util import CommandError

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

    def runs_outside_transaction(self, revision: str) -> bool:
        """Whether the revision can't run in a transaction (``workspace_transactional = False``, or
        Alembic's ``autocommit_block()``): it runs between the schema's transactions, in autocommit."""
        return revision in self._outside

    def outside_transaction(self, steps: Iterable[Step]) -> list[str]:
        """The revisions these steps apply or undo outside a transaction (such a step spans one revision),
        in order, each once ('base' for none)."""
        found = [
            (s.to_rev if self.is_upgrade(s.from_rev, s.to_rev) else s.from_rev) or BASE
            for s in steps
            if not s.transactional
        ]
        return list(dict.fromkeys(found))

    def source(self, revision: str | None) -> str:
        """The revision file's text ('' for base, or a file that can't be read)."""
        script = None if revision is None else self.script.get_revision(revision)
        return "" if script is None else _source(script) or ""

    def _needs_online(self, script: Script | None) -> bool:
        if script is None or script.module is None:
            return False
        if getattr(script.module, "workspace_online", False):
            return True
        source = _source(script)
        if source is None:
            return True
        return bool(_NEEDS_CONNECTION.search(_CONTEXT_FOR_AUTOCOMMIT.sub("", source)))

    @staticmethod
    def _declares_outside(script: Script | None) -> bool:
        if script is None or script.module is None:
            return False
        if getattr(script.module, NON_TRANSACTIONAL_ATTRIBUTE, True) is False:
            return True
        return bool(_AUTOCOMMIT_BLOCK.search(_source(script) or ""))

    def plan(self, from_rev: str | None, to_rev: str | None, *, online: bool = False) -> Plan:
        """Split from_rev -> to_rev into compiled and online steps; cached per process. A revision that
        can't run in a transaction is always a step of its own (NON_TRANSACTIONAL when it compiles).

        ``online=True`` plans the whole range through Alembic, one online step between the revisions that
        can't run in a transaction (each its own ONLINE_NON_TRANSACTIONAL step): the reference the fast
        path is verified against, and a way to bypass it."""
        key = (from_rev, to_rev, online)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        with ALEMBIC_LOCK:
            plan = self._plans.get(key)
            if plan is None and (recorded := plan_record.read(self._plan_record, key)) is not None:
                plan = self._plans[key] = Plan(from_rev, to_rev, recorded)  # planned by an earlier process
            if plan is None:
                started = time.perf_counter()
                if self._between(from_rev, to_rev):
                    _ = self.script  # a chain that no longer loads says so here, not as a range that won't compile
                steps = tuple(self._steps(from_rev, to_rev, online=online))
                plan = self._plans[key] = Plan(from_rev, to_rev, steps)
                plan_record.write(self._plan_record, key, steps)
                log.info(
                    "planned %s -> %s: %d step(s), path %s, in %.0f ms (once per process)",
                    from_rev or BASE,
                    to_rev or BASE,
                    len(steps),
                    plan.path,
                    (time.perf_counter() - started) * 1000,
                )
        return plan

    def fresh_plan(self, to_rev: str | None) -> Plan:
        """The plan a NEW schema is built with (created in the same transaction): ``plan(None, to_rev)``,
        its history collapsed where that provably builds the same schema (chain/fresh.py) when it is one
        compiled step; cached per process, as the range it is made from."""
        plan = self._fresh.get(to_rev)
        if plan is None:
            plan = self.plan(None, to_rev)
            if len(plan.steps) == 1 and plan.steps[0].kind is StepKind.COMPILED:
                step = plan.steps[0]
                plan = Plan(None, to_rev, (replace(step, statements=collapsed(step.statements, to_rev)),))
            self._fresh[to_rev] = plan
        return plan

    def claim_plan(self) -> Plan:
        """A new schema at head the other way: a spare schema this chain built at head, claimed from the
        warm pool and renamed (workspace_tool.spares); one CLAIM step."""
        return Plan(None, self.head, (Step(StepKind.CLAIM, None, self.head, spare_of=self.fingerprint),))

    def _runs(
        self, from_rev: str | None, to_rev: str | None, *, online: bool
    ) -> list[tuple[str | None, str | None, bool, bool, list[str]]]:
        """(start, end, through Alembic, outside a transaction, revisions): maximal runs of revisions alike,
        each revision that can't run in a transaction alone."""
        upgrading = self.is_upgrade(from_rev, to_rev)
        runs: list[tuple[str | None, str | None, bool, bool, list[str]]] = []
        current = from_rev
        for rev in self._between(from_rev, to_rev):
            script = self.script.get_revision(rev)
            assert script is not None
            after = rev if upgrading else self.resolve_down(script)
            through_alembic = online or rev in self._online or (rev, upgrading) in self._unrenderable
            outside = rev in self._outside
            if runs and runs[-1][2] == through_alembic and not outside and not runs[-1][3]:
                start, _, _, _, revs = runs[-1]
                runs[-1] = (start, after, through_alembic, False, [*revs, rev])
            else:
                runs.append((current, after, through_alembic, outside, [rev]))
            current = after
        return runs

    def _steps(self, from_rev: str | None, to_rev: str | None, *, online: bool = False) -> list[Step]:
        """Maximal runs of compilable revisions become one compiled step each; the rest run online.

        A run that fails to render offline is split: each of its revisions is rendered alone, and only
        those that fail (remembered per direction) run online."""
        upgrading = self.is_upgrade(from_rev, to_rev)
        steps: list[Step] = []
        for start, end, through_alembic, outside, revs in self._runs(from_rev, to_rev, online=online):
            if outside:
                steps.append(self._outside_step(revs[0], start, end, online=through_alembic, upgrading=upgrading))
                continue
            if through_alembic:
                steps.append(Step(StepKind.ONLINE, start, end))
                continue
            try:
                steps.append(Step(StepKind.COMPILED, start, end, self.compile_statements(start, end)))
            except Exception:  # some revision here can't render offline: find it, run only it online
                if len(revs) > 1 and self._find_unrenderable(revs, start, upgrading):
                    return self._steps(from_rev, to_rev)
                steps.append(Step(StepKind.ONLINE, start, end))
        return steps

    def _outside_step(self, rev: str, start: str | None, end: str | None, *, online: bool, upgrading: bool) -> Step:
        """A revision that can't run in a transaction: compiled when it renders offline, else online."""
        if not online:
            try:
                return Step(StepKind.NON_TRANSACTIONAL, start, end, self.compile_statements(start, end))
            except Exception:
                self._unrenderable.add((rev, upgrading))
        return Step(StepKind.ONLINE_NON_TRANSACTIONAL, start, end)

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
        self,
        conn: Connection,
        schema: str,
        extension_schema: str,
        from_rev: str | None,
        to_rev: str | None,
        *,
        outside_transaction: bool = False,
    ) -> None:
        """Run from_rev -> to_rev through Alembic on conn, in the caller's transaction; with
        ``outside_transaction``, on conn in autocommit, under the session's search_path (a revision that
        can't run in a transaction)."""
        attributes = {"connection": conn, "schema": schema, "extension_schema": extension_schema}
        if outside_transaction:
            attributes["outside_transaction"] = True
        self._run_env(from_rev, to_rev, as_sql=False, attributes=attributes)

    def _run_env(self, from_rev: str | None, to_rev: str | None, *, as_sql: bool, attributes: dict[str, Any]) -> None:
        upgrading = self.is_upgrade(from_rev, to_rev)
        run_env(self.config, self.script, from_rev, to_rev, upgrading=upgrading, as_sql=as_sql, attributes=attributes)


def _source(script: Script) -> str | None:
    try:
        return Path(script.path).read_text(encoding="utf-8")
    except OSError:
        return None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("false", "no", "off", "0")
