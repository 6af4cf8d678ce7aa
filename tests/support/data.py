"""What a test puts in the database: schemas made by hand, rows, public tables that share the project
tables' names, and chunks with embeddings at known distances."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from migrations.models import CodeChunk, CodeFile, Repository


def make_schema_by_hand(engine: sa.Engine, schema: str, *tables: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
        for table in tables:
            conn.execute(sa.text(f"CREATE TABLE {schema}.{table} (id int PRIMARY KEY, note text)"))
            conn.execute(sa.text(f"INSERT INTO {schema}.{table} VALUES (1, 'kept')"))


def add_rows(engine: sa.Engine, project_id: str, *names: str) -> None:
    with engine.begin() as conn:
        for name in names:
            conn.execute(sa.text(f'INSERT INTO "project_{project_id}".items (name) VALUES (:n)'), {"n": name})


PUBLIC_TWINS = """
CREATE TABLE public.repositories (id serial PRIMARY KEY, name integer, owner text NOT NULL, path varchar(7));
CREATE TABLE public.code_files (id bigint PRIMARY KEY, language text DEFAULT 'cobol', blob bytea,
                                content_hash text);
INSERT INTO public.repositories (name, owner, path) VALUES (1, 'alice', '/a'), (2, 'bob', NULL);
INSERT INTO public.code_files VALUES (10, 'fortran', '\\x00ff'::bytea, 'h1'), (11, NULL, NULL, NULL);
"""


def make_public_twins(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(PUBLIC_TWINS)


def public_state(engine: sa.Engine) -> dict[str, Any]:
    """The public schema's catalog and the exact text of every row of the twins."""
    with engine.connect() as conn:
        rows = {
            table: conn.execute(sa.text(f"SELECT t::text FROM public.{table} t ORDER BY id")).scalars().all()
            for table in ("repositories", "code_files")
        }
        from workspace_tool.schema.catalog import snapshot

        return {"catalog": snapshot(conn, "public", include_version=False), "rows": rows}


DIMS = 768
NEAREST = 5


def vectors() -> tuple[list[float], list[tuple[int, list[float]]]]:
    """A query vector and 40 chunks at cosine distances increasing with their index (shuffled)."""
    query = [0.0] * DIMS
    query[0] = 1.0
    chunks = []
    for i in range(40):
        angle = math.radians(2 + 2 * i)
        v = [0.0] * DIMS
        v[0], v[i + 1] = math.cos(angle), math.sin(angle)
        chunks.append((i, v))
    random.Random(6).shuffle(chunks)
    return query, chunks


def add_chunks(orm_session: Session | Any) -> None:
    repo = Repository(path="/repo", name="repo")
    code_file = CodeFile(repository=repo, path="/repo/a.py", relative_path="a.py")
    _, chunks = vectors()
    orm_session.add_all(
        [CodeChunk(code_file=code_file, content=f"chunk {i}", embedding=v, token_count=i) for i, v in chunks]
    )


def nearest_statement() -> sa.Select[CodeChunk]:
    query, _ = vectors()
    return sa.select(CodeChunk).order_by(CodeChunk.embedding.cosine_distance(query)).limit(NEAREST)


DATA_TABLES = ("repositories", "code_files", "code_chunks")  # the example chain's tables that hold data


def data_rows(engine: sa.Engine, schema: str) -> dict[str, list[str]]:
    """Every row of the project's data tables, each as its text (embeddings included), in id order: what an
    export, a clone or a move must carry over equal."""
    with engine.connect() as conn:
        return {
            t: list(conn.execute(sa.text(f"SELECT t::text FROM {schema}.{t} t ORDER BY t.id")).scalars())
            for t in DATA_TABLES
        }


def damage(file: Path, at: int) -> None:
    """Flip the bits of one byte of ``file`` (an export whose checksum no longer matches)."""
    data = bytearray(file.read_bytes())
    data[at] ^= 0xFF
    file.write_bytes(bytes(data))
