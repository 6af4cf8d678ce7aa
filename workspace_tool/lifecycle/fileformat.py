"""The export file: framed, streamed both ways in constant memory, its manifest at the end (found from a
fixed-size trailer), so that an import reads the manifest first and refuses a file before touching the
database.

Layout: MAGIC, then frames (a type byte, a 4-byte big-endian length, the payload): for each table in the
manifest's order its COPY data in DATA frames and an END frame (JSON: table, rows, sha256 of its data);
then the MANIFEST frame (JSON); then the trailer: the manifest frame's offset (8 bytes) and END_MAGIC."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from typing import IO, Any

from workspace_tool.lifecycle.errors import ExportDamaged, NotAnExport

MAGIC = b"WORKSPACE-TOOL EXPORT 1\n"
END_MAGIC = b"WSTX-END"
DATA, END, MANIFEST = b"D", b"E", b"M"
_FRAME = struct.Struct(">cI")
_TRAILER = struct.Struct(">Q8s")
CHUNK = 1 << 18  # what one DATA frame holds at most (COPY hands over smaller pieces; they are gathered)


class Writer:
    """Writes an export to ``out`` (any binary stream, seekable or not)."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.offset = 0
        self._write(MAGIC)

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.offset += len(data)

    def frame(self, kind: bytes, payload: bytes) -> None:
        self._write(_FRAME.pack(kind, len(payload)))
        self._write(payload)

    def table(self) -> TableSink:
        return TableSink(self)

    def finish(self, manifest: dict[str, Any]) -> None:
        at = self.offset
        self.frame(MANIFEST, json.dumps(manifest, sort_keys=True).encode())
        self._write(_TRAILER.pack(at, END_MAGIC))


class TableSink:
    """One table's COPY data: a file-like ``write`` for psycopg2's copy_expert, hashed as it goes."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.sha = hashlib.sha256()
        self.size = 0
        self._pending: list[bytes] = []
        self._pending_size = 0

    def write(self, data: bytes | str) -> int:
        chunk = data.encode() if isinstance(data, str) else bytes(data)
        self.sha.update(chunk)
        self.size += len(chunk)
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        if self._pending_size >= CHUNK:
            self._flush()
        return len(chunk)

    def _flush(self) -> None:
        if self._pending:
            self.writer.frame(DATA, b"".join(self._pending))
            self._pending, self._pending_size = [], 0

    def close(self, table: str, rows: int) -> dict[str, Any]:
        """End the table's data; what the manifest says of it."""
        self._flush()
        entry = {"table": table, "rows": rows, "sha256": self.sha.hexdigest(), "bytes": self.size}
        self.writer.frame(END, json.dumps(entry, sort_keys=True).encode())
        return entry


def read_manifest(path: str) -> dict[str, Any]:
    """The manifest of the export at ``path``; NotAnExport when it isn't one, ExportDamaged when it was
    cut short or its manifest doesn't parse. Reads the start and the end of the file only."""
    try:
        with open(path, "rb") as file:
            if file.read(len(MAGIC)) != MAGIC:
                raise NotAnExport(path, "it does not start as one")
            file.seek(0, 2)
            size = file.tell()
            if size < len(MAGIC) + _TRAILER.size:
                raise ExportDamaged(path, "it is cut short")
            file.seek(size - _TRAILER.size)
            at, end = _TRAILER.unpack(file.read(_TRAILER.size))
            if end != END_MAGIC or not len(MAGIC) <= at < size - _TRAILER.size:
                raise ExportDamaged(path, "it is cut short: no manifest at its end")
            file.seek(at)
            kind, payload = _read_frame(file, path)
            if kind != MANIFEST:
                raise ExportDamaged(path, "its manifest is not where its trailer says")
            manifest: dict[str, Any] = json.loads(payload)
    except OSError as exc:
        raise NotAnExport(path, f"it can't be read: {exc.strerror or exc}") from None
    except (ValueError, UnicodeError):
        raise ExportDamaged(path, "its manifest does not parse") from None
    if not isinstance(manifest, dict) or manifest.get("format") != 1:
        raise NotAnExport(path, "its manifest is not of format 1")
    return manifest


def _read_frame(file: IO[bytes], path: str) -> tuple[bytes, bytes]:
    head = file.read(_FRAME.size)
    if len(head) != _FRAME.size:
        raise ExportDamaged(path, "it is cut short")
    kind, length = _FRAME.unpack(head)
    payload = file.read(length)
    if len(payload) != length:
        raise ExportDamaged(path, "it is cut short")
    return kind, payload


class Reader:
    """Reads the tables of an export at ``path`` in order, each as a file-like source for COPY FROM,
    checked against the manifest's checksums as it goes."""

    def __init__(self, path: str, file: IO[bytes]) -> None:
        self.path = path
        self.file = file
        if file.read(len(MAGIC)) != MAGIC:
            raise NotAnExport(path, "it does not start as one")

    def tables(self, entries: list[dict[str, Any]]) -> Iterator[TableSource]:
        for entry in entries:
            source = TableSource(self, entry)
            yield source
            source.finish()


class TableSource:
    """One table's COPY data: ``read`` for psycopg2's copy_expert, until its END frame."""

    def __init__(self, reader: Reader, entry: dict[str, Any]) -> None:
        self.reader = reader
        self.entry = entry
        self.sha = hashlib.sha256()
        self._buffer = b""
        self._ended: dict[str, Any] | None = None

    def read(self, size: int = -1) -> bytes:
        while not self._buffer and self._ended is None:
            kind, payload = _read_frame(self.reader.file, self.reader.path)
            if kind == DATA:
                self.sha.update(payload)
                self._buffer = payload
            elif kind == END:
                self._ended = json.loads(payload)
            else:
                raise ExportDamaged(self.reader.path, f"table {self.entry['table']}'s data is not followed by its end")
        if size is None or size < 0:
            size = len(self._buffer)
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def readline(self, size: int = -1) -> bytes:  # copy_expert may ask for lines (text format)
        return self.read(size)

    def finish(self) -> None:
        """After the COPY: the table's data read to its end, its checksum as the manifest says."""
        while self.read(CHUNK):
            pass
        name = self.entry["table"]
        assert self._ended is not None
        if self._ended.get("table") != name:
            raise ExportDamaged(self.reader.path, f"table {name}'s data is not where the manifest says")
        if self.sha.hexdigest() != self.entry["sha256"] or self._ended.get("sha256") != self.entry["sha256"]:
            raise ExportDamaged(self.reader.path, f"table {name}'s checksum does not match")
