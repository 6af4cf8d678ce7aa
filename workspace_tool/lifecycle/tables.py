"""A project schema's data as the lifecycle commands move it: its tables in foreign-key order (parents
first, so rows go in without deferring constraints), their columns, and the sequences behind them. The
version table is not data: the chain writes it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Connection, text

from workspace_tool.sql import quote_ident, sql_literal

VERSION_TABLE = "alembic_version"

# Ordinary and partitioned tables (not the partitions: their parent's COPY carries their rows), with
# their columns that hold data (no generated ones), in column order.
_TABLES = text(
    "SELECT c.relname AS name, array_agg(a.attname::text ORDER BY a.attnum) AS columns "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' "
    "WHERE n.nspname = :schema AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
    "AND c.relname <> 'alembic_version' GROUP BY c.relname ORDER BY c.relname"
)
# Foreign keys between the schema's own tables: (child, parent).
_REFERENCES = text(
    "SELECT c.relname AS child, p.relname AS parent FROM pg_constraint k "
    "JOIN pg_class c ON c.oid = k.conrelid JOIN pg_class p ON p.oid = k.confrelid "
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE k.contype = 'f' AND n.nspname = :schema AND p.relnamespace = n.oid AND c.oid <> p.oid"
)
# Sequences behind columns (serial and identity), with their table and column.
_SEQUENCES = text(
    "SELECT s.relname AS sequence, t.relname AS table_name, a.attname AS column_name "
    "FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' "
    "JOIN pg_class t ON t.oid = d.refobjid JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid "
    "JOIN pg_namespace n ON n.oid = s.relnamespace "
    "WHERE n.nspname = :schema AND d.deptype IN ('a', 'i') ORDER BY s.relname"
)

# Indexes that back no constraint (a primary key, a unique or exclusion constraint stays: foreign keys and
# the copy's checks need them), with the statement that builds each as it is. Only those on plain columns:
# a predicate or an expression deparsed and parsed again can come back in other words (measured: a partial
# index's `= ANY (ARRAY[...])` did), which `check` would report as drift.
_PLAIN_INDEXES = text(
    "SELECT i.relname AS name, pg_get_indexdef(i.oid) AS definition FROM pg_index x "
    "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid "
    "JOIN pg_namespace n ON n.oid = t.relnamespace "
    "WHERE n.nspname = :schema AND t.relname <> 'alembic_version' AND x.indpred IS NULL AND x.indexprs IS NULL "
    "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid) ORDER BY i.relname"
)


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[str, ...]

    def qualified(self, schema: str) -> str:
        return f"{quote_ident(schema)}.{quote_ident(self.name)}"

    def column_list(self) -> str:
        return ", ".join(quote_ident(c) for c in self.columns)


def project_tables(conn: Connection, schema: str) -> list[Table]:
    """The schema's tables, parents before the tables that reference them (by name among equals)."""
    tables = {r.name: Table(r.name, tuple(r.columns)) for r in conn.execute(_TABLES, {"schema": schema})}
    parents: dict[str, set[str]] = {name: set() for name in tables}
    for row in conn.execute(_REFERENCES, {"schema": schema}):
        if row.child in parents and row.parent in tables:
            parents[row.child].add(row.parent)
    ordered: list[Table] = []
    placed: set[str] = set()
    while len(placed) < len(tables):
        ready = sorted(n for n in tables if n not in placed and parents[n] <= placed)
        if not ready:  # a cycle: the rest by name (their rows go in as they are, checked at the end)
            ready = sorted(n for n in tables if n not in placed)
        for name in ready:
            ordered.append(tables[name])
            placed.add(name)
    return ordered


def set_sequences(conn: Connection, schema: str) -> int:
    """Set each sequence behind a column past the largest value its column holds (or back to its start when
    the table is empty), in conn's transaction; the number of sequences set."""
    sequences = conn.execute(_SEQUENCES, {"schema": schema}).all()
    for row in sequences:
        sequence = f"{quote_ident(schema)}.{quote_ident(row.sequence)}"
        table = f"{quote_ident(schema)}.{quote_ident(row.table_name)}"
        column = quote_ident(row.column_name)
        conn.execute(
            text(
                f"SELECT CASE WHEN m IS NULL THEN setval({sql_literal(sequence)}, s.seqstart, false) "
                f"ELSE setval({sql_literal(sequence)}, m, true) END "
                f"FROM (SELECT max({column})::bigint AS m FROM {table}) t, pg_sequence s "
                f"WHERE s.seqrelid = {sql_literal(sequence)}::regclass"
            )
        )
    return len(sequences)


def row_counts(conn: Connection, schema: str, tables: list[Table]) -> dict[str, int]:
    """Each table's row count, in one statement."""
    if not tables:
        return {}
    parts = [f"SELECT {sql_literal(t.name)}, count(*) FROM {t.qualified(schema)}" for t in tables]
    return {str(name): int(n) for name, n in conn.execute(text(" UNION ALL ".join(parts)))}


@contextmanager
def indexes_built_after(conn: Connection, schema: str) -> Iterator[int]:
    """In conn's transaction: the schema's plain indexes dropped for the block, then built again as they were
    (pg_get_indexdef): one bulk build after the rows are in, not an insertion per row (an HNSW index over
    embeddings is many times slower to fill row by row). Yields how many."""
    found = conn.execute(_PLAIN_INDEXES, {"schema": schema}).all()
    for row in found:
        conn.execute(text(f"DROP INDEX {quote_ident(schema)}.{quote_ident(row.name)}"))
    yield len(found)
    for row in found:
        conn.execute(text(row.definition))
