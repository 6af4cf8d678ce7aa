"""WorkspaceManager: ensure, drop and inspect project schemas through a synchronous SQLAlchemy Engine."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError
from typing_extensions import Unpack

from workspace_tool import recycling, reference, registry, spares, transactions
from workspace_tool.chain import Chain
from workspace_tool.dberrors import sqlstate, translating
from workspace_tool.errors import ConfigurationError
from workspace_tool.flavor import Flavor, pooler
from workspace_tool.jobs import spare_jobs
from workspace_tool.managers import sessions
from workspace_tool.managers.core import EnsureCore, EnsureOptions, after_claim, status_reader
from workspace_tool.registry import known as cache
from workspace_tool.registry.inventory import has_registry, registry_rows, versions_reader
from workspace_tool.schema.migrate import EnsureResult, drop_schema
from workspace_tool.schema.state import version_table
from workspace_tool.status import ProjectStatus
from workspace_tool.urls import check_url

if TYPE_CHECKING:
    from sqlalchemy.orm import Session  # the ORM loads when a session is used (sessions.session)

ConfigPath = str | os.PathLike[str] | None
T = TypeVar("T")
STATUS_JOBS = 4  # connections reading the schemas' versions for `status` (measured: see the README)


class WorkspaceManager:
    """Provision and look after project schemas on one database.

    ``ensure`` is meant to be called on every request: once a project is known to be at head it is a
    dict lookup with no I/O.  Thread-safe; different projects provision in parallel.

    ``warm_pool``: claim a new project's schema from the warm pool of spare schemas at head when there is
    one (workspace_tool.spares); default: ``workspace_pool_size`` in alembic.ini (0: off). ``refill=True``
    refills the pool to that size in a background thread, on connections of this engine, after each
    schema created (one refiller per database at a time).

    ``direct_engine``: an engine on the same database that bypasses the connection pooler ``engine`` goes
    through (PgBouncer in transaction mode, ...): a migration with a revision that runs outside a
    transaction needs a session and runs there, as does building the reference ``init`` stores; the rest
    runs on ``engine``. Without it such a migration through a pooler raises SessionRequired, nothing
    changed (see workspace_tool.flavor.pooler).
    ``scoped_engines``: how many projects' engines ``connect``/``session`` keep, the most recently used
    (default: ``workspace_scoped_engines`` in alembic.ini, else 1,000; see workspace_tool.managers.sessions).
    """

    def __init__(
        self,
        engine: Engine,
        config: ConfigPath = None,
        *,
        warm_pool: int | None = None,
        refill: bool = False,
        direct_engine: Engine | None = None,
        scoped_engines: int | None = None,
    ) -> None:
        if engine.dialect.name != "postgresql":
            raise ConfigurationError(f"workspace-tool needs PostgreSQL, not {engine.dialect.name}")
        self.engine = engine
        check_url(engine.url)
        self.direct_engine = direct_engine
        if direct_engine is not None:
            if direct_engine.dialect.name != "postgresql":
                raise ConfigurationError(f"workspace-tool needs PostgreSQL, not {direct_engine.dialect.name}")
            check_url(direct_engine.url)
            pooler.trust(direct_engine)
        self.chain = Chain.load(config)
        self.cache_key = cache.database_key(engine.url, self.chain.config_path)
        size = spares.resolve_size(self.chain, warm_pool)
        refiller = spares.Refiller(engine, self.chain, size) if refill and size else None
        self._core = EnsureCore(self.chain, self.cache_key, size, refiller)
        self.scoped_engines = sessions.ScopedEngines(sessions.scoped_engines_size(self.chain, scoped_engines))
        self._probe: Any = None
        self._probe_lock = threading.Lock()

    @property
    def head(self) -> str:
        return self.chain.head

    # ------------------------------------------------------------------- ensure
    def ensure(self, project_id: str, **options: Unpack[EnsureOptions]) -> str:
        """Return the project's schema, creating it or bringing it to head first if needed.

        Options (EnsureOptions): ``upgrade=False`` raises WorkspaceOutdated instead of upgrading;
        ``verify=True`` skips the cache and reads the schema's alembic_version (one round trip when it is at
        head); ``owner_role`` grants that role (created NOLOGIN if missing) the schema's tables, in the same
        transaction (see schema/roles.py); an existing schema holding relations but no alembic_version (not
        made by workspace-tool) raises UnmanagedSchema and is left alone, unless ``adopt=True`` runs the
        chain into it."""
        if not options.get("verify") and (schema := self._core.cached(project_id, options.get("owner_role"))):
            return schema
        return self.ensure_detailed(project_id, **options).schema

    def ensure_detailed(self, project_id: str, **options: Unpack[EnsureOptions]) -> EnsureResult:
        """Like ensure, returning what was done and how long it took."""
        call = self._core.start(project_id, options)
        if call.result is not None:
            return call.result
        if call.verify and (answer := self._core.verified(call, self._probe_version(call.schema))) is not None:
            return answer
        flavor = self._flavor().with_direct(self.direct_engine is not None)
        pool = first = True
        if (claim := self._core.claim(call, flavor)) is not None:
            # A new project's claim from the warm pool, alone first (one implicit transaction that sets its
            # own isolation level), on a connection as the engine hands it out, with none of the careful
            # path's layers around it: measured, a third of the client's CPU per claim (see _claim_first)
            claimed = self._claim_first(call.schema, claim)
            if isinstance(claimed, EnsureResult):
                return self._core.finished(call, claimed)
            pool, first = after_claim(claimed)
        work = self._core.work(call, flavor, pool=pool, first_round_trip=first)
        try:
            result = self._on_connection(call.schema, work)
        except pooler.UseDirect:  # a revision outside a transaction: on the direct engine
            result = self._on_connection(
                call.schema,
                self._core.work(call, flavor.with_direct(False), pool=pool, first_round_trip=first),
                self.direct_engine,
            )
        return self._core.finished(call, result)

    def _claim_first(self, schema: str, claim: Callable[[Connection], T]) -> T:
        """The claim sent alone, on a connection not pinned to READ COMMITTED (``transactions.own``: the
        claim's SQL sets its level itself), its errors translated. Measured, claims in a row against the
        same claim through ``_on_connection`` and the careful path's entry: the client's CPU per claim
        0.17-0.20 ms against 0.27-0.32, the claim's wall time 0.69-0.82 ms against 0.84-1.00."""
        with translating(self.engine.url, schema), self.engine.connect() as conn:
            return claim(conn)

    def _probe_version(self, schema: str) -> str | None:
        """One round trip on a held autocommit connection; None when unreadable."""
        sql = f"SELECT version_num FROM {version_table(schema)}"
        with self._probe_lock:
            try:
                if self._probe is None:
                    probe = self.engine.raw_connection()
                    # Detached: in autocommit it must never go back to the pool, where the next
                    # borrower's "transaction" would commit statement by statement.
                    probe.detach()
                    probe.dbapi_connection.autocommit = True  # type: ignore[union-attr]
                    self._probe = probe
                cursor = self._probe.cursor()
                try:
                    cursor.execute(sql)
                    rows = cursor.fetchall()
                finally:
                    cursor.close()
            except DBAPIError:
                self._close_probe()
                return None
            except Exception as exc:
                if type(exc).__module__.startswith("psycopg2"):
                    if sqlstate(exc) is None:  # a broken connection, not a missing table
                        self._close_probe()
                    return None
                raise
        return str(rows[0][0]) if len(rows) == 1 else None

    def _close_probe(self) -> None:
        if self._probe is not None:
            with contextlib.suppress(Exception):
                self._probe.invalidate()
            self._probe = None

    # ------------------------------------------------------------ administration
    def bootstrap(self, force: bool = False) -> str:
        """Create or migrate the registry and the vector extension (once per process); return the
        extension's schema."""
        return self._flavor(force).extension_schema

    def _flavor(self, force: bool = False) -> Flavor:
        """The database's flavor (with the extension's schema), from its bootstrap, cached per process."""
        flavor = None if force else cache.bootstrapped(self.cache_key)
        if flavor is None:
            flavor = self._on_connection(None, lambda conn: registry.bootstrap(conn, self.chain.namespace))
            cache.set_bootstrapped(self.cache_key, flavor)
        return flavor

    def init(self) -> str:
        """`workspace-tool init`: bootstrap (again), and store the reference catalog `check` compares
        schemas with (see workspace_tool.reference); return the extension's schema."""
        extension_schema = self.bootstrap(force=True)
        # a chain with a revision outside a transaction builds it in parts: the direct engine's session
        self._on_connection(None, lambda conn: reference.store(conn, self.chain), self.direct_engine)
        return extension_schema

    def has_registry(self) -> bool:
        """True once something was provisioned in this database (the registry exists). Read-only."""
        return self._on_connection(None, lambda conn: has_registry(conn, self.chain.namespace))

    def drop(self, project_id: str) -> bool:
        """Drop the project's schema and its registry row together; False if neither existed."""
        schema = self.chain.namespace.schema_for(project_id)
        self.invalidate([project_id])
        self.bootstrap()
        dropped = self._on_connection(schema, lambda conn: drop_schema(conn, project_id, schema, self.chain.namespace))
        self.invalidate([project_id])
        return dropped

    def status(self, project_ids: list[str] | None = None, *, jobs: int = STATUS_JOBS) -> list[ProjectStatus]:
        """Per project: schema, its actual revision, registry revision and state; with no ids, every
        registered project plus project schemas missing from the registry. Read-only (an empty list on a
        database where nothing was provisioned); versions are read on ``jobs`` connections (fewer if the
        engine's pool is smaller), each replaced every ``workspace_recycle_after`` schemas (see
        workspace_tool.recycling)."""
        recycle_after = recycling.configured(self.chain)
        versions_of = versions_reader(self.engine, spare_jobs(self.engine, jobs), recycle_after)
        return self._on_connection(None, status_reader(self.chain, project_ids, versions_of))

    def projects(self) -> list[registry.RegistryRow]:
        """Every registry row. Read-only (an empty list when there is no registry yet)."""
        return self._on_connection(None, lambda conn: registry_rows(conn, self.chain.namespace))

    def invalidate(self, project_ids: list[str] | None = None) -> None:
        cache.invalidate(self.cache_key, project_ids)

    @property
    def refiller(self) -> spares.Refiller | None:
        """The background refill of the warm pool (``refill=True``), else None."""
        return self._core.refiller

    def close(self) -> None:
        """Stop the background refill (after the spare it is building) and release the held probe
        connection (the engine stays the caller's)."""
        if self._core.refiller is not None:
            self._core.refiller.close()
        with self._probe_lock:
            if self._probe is not None:
                self._probe.close()
                self._probe = None

    def _on_connection(self, schema: str | None, work: Callable[[Connection], T], engine: Engine | None = None) -> T:
        """``work`` on a connection of ``engine`` (default: the manager's), its errors translated."""
        engine = engine or self.engine
        with translating(engine.url, schema), transactions.connect(engine) as conn:
            return work(conn)

    # ------------------------------------------------------------ application
    def connect(self, project_id: str) -> contextlib.AbstractContextManager[Connection]:
        """``with mgr.connect(project_id) as conn:`` a Connection on the project's schema (ensured first),
        through ``schema_translate_map``; see workspace_tool.managers.sessions."""
        return sessions.connect(self, project_id)

    def session(self, project_id: str, **session_options: Any) -> contextlib.AbstractContextManager[Session]:
        """``with mgr.session(project_id) as s:`` an ORM Session on the project's schema (ensured first)."""
        return sessions.session(self, project_id, **session_options)
