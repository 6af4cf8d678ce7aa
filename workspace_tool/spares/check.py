"""Is renaming safe? A chain whose objects name their schema in stored text (a function's body or its
``SET search_path FROM CURRENT``, a string in a view or a default, a row a revision inserts with
``current_schema()``, in any case or with only part of it) can't be renamed: the first spare of each fill
is built under another name, renamed and searched for that name (``rename_and_scan``); if found, ``fill``
raises PoolRefused and makes no spare, so ensure keeps building schemas (the fast path)."""

from __future__ import annotations

from sqlalchemy import Connection, text

from workspace_tool.sql import quote_ident, sql_literal

# What, in a schema, still names ``old`` once the schema was renamed from it (``:needle``, searched in
# lower-cased text: see ``_needle``): references by OID follow a rename (tables, sequences behind serial
# defaults, types, views' and rules' parse trees, foreign keys, triggers' functions), text does not. Each
# object's stored text is read (a function's body and its SET options) or deparsed (defaults, constraints,
# indexes, views, triggers and their arguments, policies, rules, domains' defaults and constraints), and
# comments; then the rows of its tables. The schema's relations are read once (pg_class has no index on
# relnamespace alone), the rest through their indexes. Each catalog's rows of this schema are read into a
# MATERIALIZED CTE before anything is deparsed: a filter that deparses, on a plain join, is pushed down by
# the planner to the scan of the whole catalog (every default, constraint, trigger and rule of the
# database), where it opens other schemas' relations: it waits for a project being dropped and can fail
# with "could not open relation with OID" once that drop commits.
_NAMES_ITSELF = text(
    """
WITH nsp AS (SELECT oid FROM pg_namespace WHERE nspname = :schema),
rel AS MATERIALIZED (SELECT c.oid, c.relname, c.relkind FROM pg_class c, nsp WHERE c.relnamespace = nsp.oid),
def AS MATERIALIZED (
  SELECT r.relname, a.attname, d.adbin, d.adrelid FROM rel r JOIN pg_attrdef d ON d.adrelid = r.oid
  JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum),
con AS MATERIALIZED (SELECT k.oid, k.conname FROM rel r JOIN pg_constraint k ON k.conrelid = r.oid),
trg AS MATERIALIZED (SELECT t.oid, t.tgname FROM rel r JOIN pg_trigger t ON t.tgrelid = r.oid WHERE NOT t.tgisinternal),
pol AS MATERIALIZED (
  SELECT p.polname, p.polqual, p.polwithcheck, p.polrelid FROM rel r JOIN pg_policy p ON p.polrelid = r.oid),
rul AS MATERIALIZED (
  SELECT w.oid, w.rulename FROM rel r JOIN pg_rewrite w ON w.ev_class = r.oid WHERE w.rulename <> '_RETURN'),
dom AS MATERIALIZED (
  SELECT t.oid, t.typname, t.typdefault FROM pg_type t, nsp WHERE t.typnamespace = nsp.oid AND t.typtype = 'd'),
domcon AS MATERIALIZED (SELECT d.oid AS domain, k.oid FROM dom d JOIN pg_constraint k ON k.contypid = d.oid
  WHERE k.conrelid = 0)
SELECT 'function ' || p.proname || '()' FROM pg_proc p, nsp WHERE p.pronamespace = nsp.oid
  AND strpos(lower(concat_ws(' ', p.prosrc, array_to_string(p.proconfig, ' '), p.probin)), :needle) > 0
UNION ALL
SELECT 'the default of ' || relname || '.' || attname FROM def
  WHERE strpos(lower(pg_get_expr(adbin, adrelid)), :needle) > 0
UNION ALL
SELECT 'constraint ' || conname FROM con WHERE strpos(lower(pg_get_constraintdef(oid)), :needle) > 0
UNION ALL
SELECT CASE WHEN r.relkind IN ('v', 'm') THEN 'view ' ELSE 'index ' END || r.relname FROM rel r
  WHERE r.relkind IN ('v', 'm', 'i', 'I')
  AND strpos(lower(CASE WHEN r.relkind IN ('v', 'm') THEN pg_get_viewdef(r.oid) ELSE pg_get_indexdef(r.oid) END),
             :needle) > 0
UNION ALL
SELECT 'trigger ' || tgname FROM trg WHERE strpos(lower(pg_get_triggerdef(oid)), :needle) > 0
UNION ALL
SELECT 'policy ' || polname FROM pol
  WHERE strpos(lower(concat_ws(' ', pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid))),
               :needle) > 0
UNION ALL
SELECT 'rule ' || rulename FROM rul WHERE strpos(lower(pg_get_ruledef(oid)), :needle) > 0
UNION ALL
SELECT 'domain ' || d.typname FROM dom d WHERE strpos(lower(d.typdefault), :needle) > 0
  OR EXISTS (SELECT 1 FROM domcon k WHERE k.domain = d.oid AND strpos(lower(pg_get_constraintdef(k.oid)), :needle) > 0)
UNION ALL
SELECT 'a comment' FROM pg_description ds WHERE strpos(lower(ds.description), :needle) > 0 AND ds.objoid IN (
  SELECT oid FROM nsp UNION ALL SELECT oid FROM rel
  UNION ALL SELECT p.oid FROM pg_proc p, nsp WHERE p.pronamespace = nsp.oid
  UNION ALL SELECT oid FROM con)
"""
)
_TABLES = text(
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = :schema AND c.relkind IN ('r', 'p') ORDER BY c.relname"
)


def rename_and_scan(conn: Connection, old: str, new: str) -> list[str]:
    """Rename schema ``old`` to ``new`` (in the caller's transaction) and list what in it still names
    ``old``, in any case and whole or by its random part (``_needle``): why a schema built under one name
    can't be handed out under another. Empty when it can."""
    conn.execute(text(f"ALTER SCHEMA {quote_ident(old)} RENAME TO {quote_ident(new)}"))
    params = {"schema": new, "needle": _needle(old)}
    found = [str(what) for what in conn.execute(_NAMES_ITSELF, params).scalars()]
    tables = list(conn.execute(_TABLES, {"schema": new}).scalars())
    if tables:
        rows = " UNION ALL ".join(
            f"(SELECT {sql_literal('rows of ' + t)} FROM {quote_ident(new)}.{quote_ident(t)} AS x "
            "WHERE strpos(lower(x::text), :needle) > 0 LIMIT 1)"
            for t in tables
        )
        found += [str(what) for what in conn.execute(text(rows), params).scalars()]
    return found


_RANDOM_PART = 12  # hex digits: a spare's name ends in 16 (spare_name), which appear nowhere by chance


def _needle(old: str) -> str:
    """What text naming schema ``old`` contains, however a revision transformed it (upper case, another
    separator for its ``_``, quoted, concatenated, only its last part): its random last part when it has one
    (a spare's name), else the whole name; in lower case, searched in lower-cased text."""
    tail = old.rsplit("_", 1)[-1]
    random = len(tail) >= _RANDOM_PART and all(c in "0123456789abcdef" for c in tail.lower())
    return (tail if random else old).lower()
