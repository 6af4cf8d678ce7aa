"""Writing revisions for the shared chain: ``workspace-tool revision -m MSG [--autogenerate]``.

Autogenerate compares the chain's models (``workspace_models`` in alembic.ini, or a MetaData you pass) with a
*scratch* project schema provisioned at head, so the comparison sees exactly what every project schema
looks like, and nothing else in the database.  The scratch schema is created inside a transaction that is
rolled back (and then dropped again, to be sure) whatever happens, so it is never visible to anyone else.
The comparison runs under the same guards as a migration (``workspace_tool.alembic_env``): the project schema is
reached through ``search_path`` and reflected as the default schema, so the operations written into the
revision carry no schema name and apply to every project schema.  When the comparison finds no difference,
no revision is written (unless asked for: ``allow_empty``).

After a revision is written, this process's ``Chain.load`` cache for that alembic.ini still holds the old
chain, and so do managers built on it: ``create_revision`` forgets the cached chain (the next
``Chain.load`` reads the new file) and the "already at head" cache of every manager on that config;
managers created before the revision keep their old ``chain`` object, so create new ones (or restart).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.operations.ops import MigrationScript
from alembic.script import Script
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, MetaData, text

from workspace_tool import registry, transactions
from workspace_tool.alembic_env import TEMPLATE_DIR
from workspace_tool.chain import ALEMBIC_LOCK, CONFIG_ENV, Chain, load_script_directory, resolve_config_path
from workspace_tool.chain.autogenerate import autogenerate_options, chain_models, reflect_unqualified_sequences
from workspace_tool.chain.loading import MODELS_OPTION
from workspace_tool.dberrors import translating
from workspace_tool.errors import ConfigurationError, NoChangesDetected
from workspace_tool.namespace import DEFAULT
from workspace_tool.registry import known as cache
from workspace_tool.schema.migrate import scratch_schema
from workspace_tool.sql import drop_schema_cascade, quote_ident, search_path_sql

SCRATCH_PREFIX = "project_autogen_"

ConfigPath = str | os.PathLike[str] | None


# ------------------------------------------------------------------- comparison
def compare_schema(
    conn: Connection, schema: str, extension_schema: str, metadata: MetaData | None = None, *, config: ConfigPath = None
) -> list[Any]:
    """Differences between ``metadata`` (default: the models of the chain at ``config``, its alembic.ini's
    ``workspace_models``) and ``schema``, as Alembic's ``compare_metadata`` lists them, with the migration's
    guards. Runs in a transaction of its own on ``conn`` (which must not be in one) and rolls it back."""
    if metadata is None:
        metadata = chain_models(resolve_config_path(config))
    transactions.require(conn)
    with conn.begin() as transaction:
        conn.execute(text(search_path_sql(schema, extension_schema)))
        translated = conn.execution_options(schema_translate_map={None: schema})
        context = MigrationContext.configure(
            translated,
            opts={
                "target_metadata": metadata,
                "version_table_schema": schema,
                "include_schemas": False,
                **autogenerate_options(),
            },
        )
        reflect_unqualified_sequences(context, schema)
        diffs = compare_metadata(context, metadata)
        transaction.rollback()
    return list(diffs)


# -------------------------------------------------------------------- revisions
@dataclass(frozen=True)
class RevisionResult:
    revision: str
    down_revision: str | None
    path: Path
    autogenerate: bool
    operations: int  # top-level operations autogenerate wrote (0 without --autogenerate)

    def as_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "down_revision": self.down_revision,
            "path": str(self.path),
            "autogenerate": self.autogenerate,
            "operations": self.operations,
        }


def create_revision(
    message: str,
    *,
    config: ConfigPath = None,
    autogenerate: bool = False,
    engine: Engine | None = None,
    target_metadata: MetaData | None = None,
    rev_id: str | None = None,
    allow_empty: bool = False,
) -> RevisionResult:
    """Write a new revision on top of the chain's head (Alembic's ``command.revision``).

    With ``autogenerate``, ``engine`` is the database to provision the scratch schema on, and
    ``target_metadata`` what to compare with (default: the chain's models, ``workspace_models`` in
    alembic.ini). When the comparison finds no difference, nothing is written and ``NoChangesDetected`` is
    raised (an empty revision would put every schema "behind" a head that changes nothing), unless
    ``allow_empty``. Without ``autogenerate`` the revision is always written, empty, to fill in by hand."""
    if not message or not message.strip():
        raise ConfigurationError('a revision needs a message: -m "what it changes"')
    config_path = resolve_config_path(config)
    chain = _current_chain(config_path)
    if rev_id is not None:
        _check_rev_id(rev_id, chain)
    alembic_config = Config(str(config_path), cmd_opts=argparse.Namespace(quiet=True, x=None))  # no stdout chatter
    operations: list[int] = []

    def count_or_drop(context: Any, revision: Any, directives: list[MigrationScript]) -> None:
        upgrade_ops = directives[0].upgrade_ops if directives else None
        if upgrade_ops is None:
            return
        operations.append(len(upgrade_ops.ops))
        if upgrade_ops.is_empty() and not allow_empty:
            directives[:] = []  # Alembic then writes no file

    if autogenerate:
        if engine is None:
            raise ConfigurationError("--autogenerate needs a database to provision a scratch schema on")
        with _scratch_schema(engine, chain) as (conn, schema, extension_schema):
            alembic_config.attributes.update(
                connection=conn, schema=schema, extension_schema=extension_schema, target_metadata=target_metadata
            )
            script = _alembic_revision(alembic_config, message, autogenerate=True, rev_id=rev_id, hook=count_or_drop)
        if script is None:
            raise NoChangesDetected()
        _check_no_schema_names(Path(script.path), schema)
    else:
        script = _alembic_revision(alembic_config, message, autogenerate=False, rev_id=rev_id, hook=None)
        assert script is not None
    forget_chain(config_path)
    down = script.down_revision
    return RevisionResult(
        revision=script.revision,
        down_revision=down if isinstance(down, str) or down is None else ",".join(down),
        path=Path(script.path),
        autogenerate=autogenerate,
        operations=sum(operations),
    )


# What a revision id may be: it names the file and goes in each schema's alembic_version (VARCHAR(32));
# no '-', '+' or '@', which Alembic reads as relative revisions and branches.
_REV_ID = re.compile(r"^[A-Za-z0-9_]{1,32}$")


def _check_rev_id(rev_id: str, chain: Chain | None) -> None:
    """A given revision id, refused before anything is written when it is no id or the chain has it."""
    if not _REV_ID.match(rev_id):
        raise ConfigurationError(
            f"--rev-id {rev_id!r}: a revision id is 1-32 characters of a-z, A-Z, 0-9 and _ (it names the file "
            "and is stored in each schema's alembic_version)"
        )
    if chain is not None and rev_id in chain.revisions:
        raise ConfigurationError(f"--rev-id {rev_id!r}: the chain has that revision already; pick another id")


def _current_chain(config_path: Path) -> Chain | None:
    """The chain as it is on disk now (the process cache may predate a revision written since); None while
    it has no revision yet (a new chain's first revision)."""
    has_revisions = bool(load_script_directory(Config(str(config_path)), config_path).get_heads())
    return Chain(config_path) if has_revisions else None


def _alembic_revision(
    config: Config, message: str, *, autogenerate: bool, rev_id: str | None, hook: Any
) -> Script | None:
    """Alembic's ``command.revision``; None when ``hook`` emptied the directives (nothing written)."""
    with ALEMBIC_LOCK:  # op/context are process-global proxies
        try:
            script = command.revision(
                config, message=message, autogenerate=autogenerate, rev_id=rev_id, process_revision_directives=hook
            )
        except CommandError as exc:
            hint = (
                f"; name the models in alembic.ini ({MODELS_OPTION} = package.module:metadata) or pass --metadata"
                if "MetaData" in str(exc)
                else ""
            )
            raise ConfigurationError(f"alembic could not write the revision: {exc}{hint}") from None
        finally:
            config.attributes.clear()
    if isinstance(script, list) and not script:
        return None
    if script is None or isinstance(script, list):  # pragma: no cover - only with branch labels/heads
        raise ConfigurationError("alembic wrote no single revision")
    return script


@contextmanager
def _scratch_schema(engine: Engine, chain: Chain | None) -> Iterator[tuple[Connection, str, str]]:
    """A project schema at head (empty for a chain with no revision yet), inside a transaction that is
    rolled back (``scratch_schema``); dropped again on the way out."""
    schema = SCRATCH_PREFIX + uuid.uuid4().hex[:12]
    with translating(engine.url), transactions.connect(engine) as conn:
        flavor = registry.bootstrap(conn, DEFAULT if chain is None else chain.namespace)
        extension_schema = flavor.extension_schema
        try:
            if chain is None:
                with conn.begin() as transaction:
                    conn.execute(text(f"CREATE SCHEMA {quote_ident(schema)}"))
                    yield conn, schema, extension_schema
                    transaction.rollback()
            else:
                plans = [(chain.plan(None, chain.head), True)]
                with scratch_schema(conn, chain, schema, flavor, plans):
                    yield conn, schema, extension_schema
        finally:
            if conn.in_transaction():
                conn.rollback()
            with conn.begin():
                drop_schema_cascade(conn, schema)


def _check_no_schema_names(path: Path, schema: str) -> None:
    source = path.read_text(encoding="utf-8")
    if schema in source:  # pragma: no cover - guarded by the search_path reflection
        path.unlink()
        raise ConfigurationError(f"autogenerate wrote the scratch schema's name into {path.name}; removed it")


def forget_chain(config_path: Path) -> None:
    """Make the next ``Chain.load(config_path)`` re-read the chain, and the next ``ensure`` of every
    project on that chain read its schema again (it may now be behind the new head)."""
    Chain.forget(config_path)
    cache.invalidate_chain(config_path)


# -------------------------------------------------------------------- new chain
_MODELS_REFERENCE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


def init_chain(
    directory: str | os.PathLike[str], *, models: str | None = None, config: ConfigPath = None
) -> list[Path]:
    """Start a new chain from the package's template (``workspace_tool/templates/workspace-tool``):
    ``config`` (default ./alembic.ini) naming the chain's models as ``workspace_models``, and ``directory``
    holding env.py, script.py.mako, versions/ and, unless ``models`` names the application's own
    (``package.module:metadata``), a models.py to write the tables in (``<directory as a package>.models:
    metadata``, found through the ini's ``prepend_sys_path``). Nothing is written if alembic.ini exists or
    ``directory`` is not empty. Returns the paths written."""
    from mako.template import Template

    target = Path(directory)
    ini = Path(config if config is not None else os.environ.get(CONFIG_ENV) or "alembic.ini")
    if models is not None and not _MODELS_REFERENCE.fullmatch(models):
        raise ConfigurationError(f"--models {models!r}: write it as package.module:attribute (a MetaData or a base)")
    if ini.exists():
        raise ConfigurationError(f"{ini} already exists: remove it, or write the new one elsewhere with -c/--config")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigurationError(f"{target} already exists and is not empty: pick a new folder for the chain")
    relative = Path(os.path.relpath(target.absolute(), ini.absolute().parent)).as_posix()
    reference = models if models is not None else _models_module(relative, ini)
    rendered = Template(filename=str(TEMPLATE_DIR / "alembic.ini.mako")).render(
        script_location=f"%(here)s/{relative}", workspace_models=reference
    )
    (target / "versions").mkdir(parents=True)
    written = [ini]
    for name in ("env.py", "script.py.mako") if models is not None else ("env.py", "models.py", "script.py.mako"):
        written.append(Path(shutil.copyfile(TEMPLATE_DIR / name, target / name)))
    ini.parent.mkdir(parents=True, exist_ok=True)
    ini.write_text(rendered, encoding="utf-8")
    return [*written, target / "versions"]


def _models_module(relative: str, ini: Path) -> str:
    """``migrations/models.py`` beside alembic.ini -> ``migrations.models:metadata``; a chain folder that
    can't be imported as a package from the ini's folder needs ``--models``."""
    parts = relative.split("/")
    if not all(part.isidentifier() for part in parts):
        raise ConfigurationError(
            f"{relative} can't be imported as a package from {ini.absolute().parent}: pick a chain folder below "
            "it named like a Python package, or name your own models with --models package.module:metadata"
        )
    return ".".join(parts) + ".models:metadata"
