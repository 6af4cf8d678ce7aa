"""One error tree. Every error a user can cause is a WorkspaceError whose message says what to do."""

from __future__ import annotations

from typing import Any


class WorkspaceError(Exception):
    """Base of every error workspace_tool raises on purpose. ``str(err)`` is one line for the user."""


class InvalidProjectId(WorkspaceError, ValueError):
    def __init__(self, project_id: object, reason: str) -> None:
        self.project_id = project_id
        self.reason = reason
        super().__init__(
            f"invalid project id {project_id!r}: {reason}; a project id is 1-50 characters of a-z and 0-9 "
            "in groups joined by single hyphens (^[a-z0-9]+(-[a-z0-9]+)*$)"
        )


class InvalidRoleName(WorkspaceError, ValueError):
    def __init__(self, role: object, reason: str) -> None:
        self.role = role
        self.reason = reason
        super().__init__(
            f"invalid owner role {role!r}: {reason}; a role name is 1-63 characters of a-z, 0-9 and _, "
            "not starting with a digit or pg_ (^[a-z_][a-z0-9_]*$)"
        )


class InvalidSchemaName(WorkspaceError, ValueError):
    def __init__(self, schema: object, prefix: str = "project_") -> None:
        self.schema = schema
        super().__init__(
            f"invalid project schema name {schema!r}: it must be {prefix!r} followed by a project id with "
            f"'-' written as '_' (^{prefix}[a-z0-9]+(_[a-z0-9]+)*$, at most {len(prefix) + 50} characters)"
        )


class ConfigurationError(WorkspaceError):
    """alembic.ini, the chain or the database URL is unusable."""


class NoChangesDetected(WorkspaceError):
    """``create_revision(autogenerate=True)`` found no difference between the models and the head: no
    revision was written (an empty one would make every schema "behind" a head that changes nothing)."""

    def __init__(self) -> None:
        super().__init__(
            "no changes detected: the models match the head; no revision written "
            "(--allow-empty, or allow_empty=True, writes one anyway)"
        )


class DatabaseUnavailable(WorkspaceError):
    """The database could not be reached or refused the login."""


class CommitsUnconfirmed(DatabaseUnavailable):
    """A fleet run committed its schemas without waiting for their flush (RunSpec.commit 'async'), and the
    one flush it waits for at its end failed: what it migrated may be undone if the server crashed.
    ``report``: the run's FleetReport (its ``unconfirmed`` says why), for what each schema did."""

    def __init__(self, migrated: int, reason: str, report: Any) -> None:
        self.migrated = migrated
        self.reason = reason
        self.report = report
        super().__init__(
            f"{migrated} schema(s) migrated, but the server did not confirm that they are on disk ({reason}): "
            "if it crashed, some are back where they were; run the command again, which migrates what is left"
        )


class RegistryError(WorkspaceError):
    """The registry can't be used by this version of the tool."""


class UnknownRevision(WorkspaceError):
    def __init__(self, schema: str, revision: str) -> None:
        self.schema = schema
        self.revision = revision
        super().__init__(
            f"schema {schema} is at revision {revision!r}, which this chain does not know: the database is "
            "newer than this code (deploy the code that wrote it) or the chain lost a revision; nothing was changed"
        )


class WorkspaceOutdated(WorkspaceError):
    def __init__(self, project_id: str, schema: str, current: str | None, head: str) -> None:
        self.project_id = project_id
        self.schema = schema
        self.current = current
        self.head = head
        super().__init__(
            f"project {project_id} (schema {schema}) is at revision {current}, behind head {head}: "
            f"run `workspace-tool upgrade {project_id}`"
        )


class WorkspaceAhead(WorkspaceError):
    """The schema is above the target of an operation that may only go up: going back is a downgrade."""

    def __init__(self, project_id: str, schema: str, current: str, target: str | None) -> None:
        self.project_id = project_id
        self.schema = schema
        self.current = current
        self.target = target
        to = target or "base"
        super().__init__(
            f"project {project_id} (schema {schema}) is at revision {current}, ahead of the target {to}; "
            f"nothing was changed: to go back, run `workspace-tool downgrade {project_id} --to {to}`"
        )


class UnmanagedSchema(WorkspaceError):
    """The project's schema exists, holds relations, and has no alembic_version: not made by workspace-tool."""

    def __init__(self, project_id: str, schema: str, relations: list[str]) -> None:
        self.project_id = project_id
        self.schema = schema
        self.relations = relations
        shown = ", ".join(relations[:3]) + (", ..." if len(relations) > 3 else "")
        super().__init__(
            f"schema {schema} already exists and holds {len(relations)} relation(s) ({shown}) but no "
            "alembic_version, so workspace-tool did not make it; nothing was changed. To run the chain into it "
            f"and register it, adopt it (`workspace-tool ensure {project_id} --adopt`, or adopt=True); if its "
            f"contents are not needed, drop it (`workspace-tool drop {project_id} --yes`)"
        )


class WorkspaceNotFound(WorkspaceError):
    """``dropped``: the schema went away (another process dropped it?) after this process ensured it."""

    def __init__(self, project_id: str, schema: str, *, dropped: bool = False) -> None:
        self.project_id = project_id
        self.schema = schema
        self.dropped = dropped
        advice = (
            "it was dropped after this process ensured it (by another process?); it is forgotten here, so the "
            "next ensure, connect or session creates it again, empty"
            if dropped
            else f"run `workspace-tool ensure {project_id}`"
        )
        super().__init__(f"project {project_id} has no schema ({schema} does not exist): {advice}")


class MigrationFailed(WorkspaceError):
    """A revision failed inside one schema; its transaction was rolled back."""

    def __init__(self, schema: str, detail: str) -> None:
        self.schema = schema
        self.detail = detail
        super().__init__(f"migrating {schema} failed and was rolled back: {detail}")


class RevisionFailed(MigrationFailed):
    """A revision's own Python code raised (not the database) while it ran in one schema; its transaction was
    rolled back. ``revision`` names it (None when no frame of the traceback is in a revision file: then
    ``revisions``, the range run, does), ``error`` is the exception in one line; the whole traceback is
    this error's cause (``--traceback`` shows it)."""

    def __init__(self, schema: str, revision: str | None, revisions: str, error: str) -> None:
        self.revision = revision
        self.revisions = revisions
        self.error = error
        raised = f"revision {revision} raised" if revision else f"running {revisions} raised"
        super().__init__(schema, f"{raised} {error}")


class HeadModelFailed(WorkspaceError):
    """The head model `check` compares schemas with (workspace_tool.reference) could not be built: the chain,
    run from base to head in a scratch schema that is rolled back (or dropped), failed there."""

    def __init__(self, head: str, detail: str) -> None:
        self.head = head
        self.detail = detail
        super().__init__(
            f"building the head model for `check` (the chain run from base to head {head} in a scratch schema, "
            f"rolled back) failed: {detail}; nothing was changed: fix the chain, then rerun"
        )


class NonTransactionalFailed(MigrationFailed):
    """A revision that can't run in a transaction failed in one schema. The schema stays at the revision
    before it (what ran in transactions before it is committed, and recorded); a failed concurrent index
    build leaves its index INVALID (``invalid_indexes``), which the next run drops before building it
    again. ``sqlstate`` is the server's error code (55P03 for a lock timeout: the fleet retries it).

    ``connection_lost``: the database connection was lost while it ran (a backend terminated, a server
    restart): the build was cut short; the fleet retries it like any lost connection. Its invalid indexes
    were then looked up on a new session, or, when that could not be done (``looked_up`` False), are the
    indexes the revision builds, any of which may have been left invalid."""

    def __init__(
        self,
        schema: str,
        revisions: str,
        reached: str | None,
        detail: str,
        invalid_indexes: tuple[str, ...] = (),
        sqlstate: str | None = None,
        *,
        connection_lost: bool = False,
        looked_up: bool = True,
    ) -> None:
        self.schema = schema
        self.detail = detail
        self.revisions = revisions
        self.reached = reached
        self.invalid_indexes = invalid_indexes
        self.sqlstate = sqlstate
        self.connection_lost = connection_lost
        self.looked_up = looked_up
        stays = f"{schema} stays at revision {reached or 'base'}"
        if connection_lost:
            message = (
                f"migrating {schema} was cut short in {revisions}, which runs outside a transaction: the database "
                f"connection was lost ({detail}); {stays}"
            )
        else:
            message = f"migrating {schema} failed in {revisions}, which runs outside a transaction: {detail}; {stays}"
        if invalid_indexes:
            names = ", ".join(invalid_indexes)
            quoted = ['"' + name.replace('"', '""') + '"' for name in invalid_indexes]
            drops = "; ".join(f'DROP INDEX CONCURRENTLY "{schema}".{name}' for name in quoted)
            if not looked_up:
                message += (
                    f"; the index(es) it builds may be left invalid: {names} (they could not be looked up); once "
                    "the database is back, a rerun drops the invalid ones and builds them again"
                )
            elif connection_lost:
                message += (
                    f", with the invalid index(es) the interrupted build left: {names}; a rerun drops them and "
                    f"builds them again (or drop them yourself: {drops})"
                )
            else:
                message += (
                    f", with the invalid index(es) the failed build left: {names}. Fix the cause and run it again "
                    f"(the run drops them first), or drop them yourself: {drops}"
                )
        else:
            message += ": run it again" if connection_lost else ": fix the cause and run it again"
        WorkspaceError.__init__(self, message)


class SessionRequired(ConfigurationError):
    """Work that runs outside a transaction (a revision with ``workspace_transactional = False`` or Alembic's
    ``autocommit_block()``) was about to start on a connection that goes through a connection pooler, where
    a session's state does not outlive a transaction (workspace_tool.flavor.pooler). Nothing was changed."""

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(
            f"{what} runs outside a transaction and needs a session: set --direct-url / WORKSPACE_TOOL_DIRECT_URL "
            "to a URL that bypasses the pooler (workspace_direct_url in alembic.ini; direct_engine= in code), "
            "since this database is reached through a connection pooler (PgBouncer?); nothing was changed"
        )


class PermissionDenied(WorkspaceError):
    """The database role lacks a privilege (SQLSTATE 42501); its transaction was rolled back.

    ``missing`` says which privilege, ``remedy`` what to do about it, ``grant`` is the SQL that gives it
    when one GRANT does (None when a privileged role must run a command instead, or the URL names no
    role to grant it to)."""

    def __init__(
        self, detail: str, missing: str, remedy: str, *, role: str | None = None, grant: str | None = None
    ) -> None:
        self.detail = detail
        self.missing = missing
        self.remedy = remedy
        self.role = role
        self.grant = grant
        super().__init__(f"{detail}: {missing}; {remedy}; nothing was changed")


class LockTimeout(WorkspaceError):
    def __init__(self, schema: str, detail: str) -> None:
        self.schema = schema
        self.detail = detail
        super().__init__(f"{schema}: could not get a lock in time ({detail}); nothing was changed, rerun later")


class PoolRefused(WorkspaceError):
    """The chain's objects name the schema they were built in as stored text (a function's body or its SET
    search_path, a string in a view, a default or a row...), which a rename does not follow: a spare schema
    can't become a project's, so the warm pool refuses this chain. ``found`` lists what names it. Also
    raised, with ``why``, on a database whose flavor refuses spares, and when the role's default privileges
    change while every spare is built (a revision that changes them)."""

    def __init__(self, found: list[str], *, why: str | None = None) -> None:
        self.found = found
        shown = "; ".join(found[:3]) + (f"; and {len(found) - 3} more" if len(found) > 3 else "")
        why = why or (
            f"once a spare schema is renamed, {shown} still name(s) the schema it was built in (stored as text, "
            "which a rename does not follow), so a project made from a spare would point at a schema that no "
            "longer exists"
        )
        super().__init__(
            f"the warm pool can't be used with this chain: {why}; no spare was made and ensure "
            "keeps building new schemas (the fast path): set workspace_pool_size = 0 in alembic.ini"
        )
