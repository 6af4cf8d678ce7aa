"""A proxy between clients and the test server that records every query the clients send on the wire.

It sees what no SQLAlchemy event or DBAPI hook can: the statements the driver sends on its own (psycopg2's
``SET default_transaction_isolation`` when autocommit goes off, its ``BEGIN``), each simple-query message
('Q': one round trip) and each extended-protocol Parse ('P'); and every error the server answers with
(ErrorResponse, 'E': what the server also writes to its log as an ERROR). Use ``url`` instead of the
server's URL::

    with WireRecorder(database_url) as wire:
        engine = sa.create_engine(wire.url)
        ...
        assert len(wire.queries) == 1
"""

from __future__ import annotations

import contextlib
import socket
import struct
import tempfile
import threading
from pathlib import Path

from sqlalchemy.engine import URL

_PORT = 5432
_SSL_REQUEST, _GSSENC_REQUEST = 80877103, 80877104


class WireRecorder:
    """A proxy on a Unix socket of its own, forwarding to the server of ``url`` (Unix socket or TCP)."""

    def __init__(self, url: URL) -> None:
        self._target = url
        self._dir = tempfile.TemporaryDirectory(prefix="wst-wire-")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(Path(self._dir.name) / f".s.PGSQL.{_PORT}"))
        self._listener.listen(64)
        self._lock = threading.Lock()
        self._queries: list[str] = []
        self._errors: list[str] = []
        self._sockets: list[socket.socket] = []
        self._closed = False
        self.url = url.set(host=None, port=_PORT).update_query_dict({"host": self._dir.name})
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def queries(self) -> list[str]:
        """Every query sent so far, in order: a simple query's text, or ``"parse: <text>"``."""
        with self._lock:
            return list(self._queries)

    @property
    def errors(self) -> list[str]:
        """Every error the server sent so far, in order, as ``"<SQLSTATE> <message>"``."""
        with self._lock:
            return list(self._errors)

    def clear(self) -> None:
        with self._lock:
            self._queries.clear()
            self._errors.clear()

    def __enter__(self) -> WireRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.close()
        self._dir.cleanup()

    # ---------------------------------------------------------------- forwarding
    def _connect_server(self) -> socket.socket:
        host = self._target.query.get("host")
        if isinstance(host, str) and host.startswith("/"):
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(str(Path(host) / f".s.PGSQL.{self._target.port or _PORT}"))
            return server
        return socket.create_connection((self._target.host or "localhost", self._target.port or _PORT))

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = self._connect_server()
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._from_client, args=(client, server), daemon=True).start()
            threading.Thread(target=self._from_server, args=(server, client), daemon=True).start()

    def _from_server(self, server: socket.socket, client: socket.socket) -> None:
        """Forward the server's messages, recording its errors. Its first byte may be the one-byte answer to
        an SSL or GSS request ('N': none; 'S'/'G': encrypted from there on, forwarded unread)."""
        buffer = b""
        reading, first = True, True
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                if reading:  # recorded before the client sees it: a test reads them right after its call
                    buffer += data
                    if first:  # the startup's first message is Authentication ('R') or an error ('E')
                        first = False
                        reading = buffer[:1] not in (b"S", b"G")  # encrypted from here on: forwarded unread
                        buffer = buffer[1:] if buffer[:1] == b"N" else buffer
                    while reading and len(buffer) >= 5:
                        length = struct.unpack("!i", buffer[1:5])[0]
                        if len(buffer) < 1 + length:
                            break
                        kind, body, buffer = buffer[:1], buffer[5 : 1 + length], buffer[1 + length :]
                        if kind == b"E":
                            self._record_error(body)
                client.sendall(data)
        for s in (server, client):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def _record_error(self, body: bytes) -> None:
        fields = {f[:1]: f[1:].decode(errors="replace") for f in body.split(b"\x00") if f}
        with self._lock:
            self._errors.append(f"{fields.get(b'C', '?')} {fields.get(b'M', '')}")

    def _from_client(self, client: socket.socket, server: socket.socket) -> None:
        buffer = b""
        started = False  # past the startup message: typed messages from here on

        def take(n: int) -> bytes | None:
            nonlocal buffer
            while len(buffer) < n:
                data = client.recv(65536)
                if not data:
                    return None
                buffer += data
            chunk, buffer = buffer[:n], buffer[n:]
            return chunk

        try:
            while True:
                if not started:
                    head = take(8)
                    if head is None:
                        break
                    length, code = struct.unpack("!ii", head)
                    body = take(length - 8)
                    if body is None:
                        break
                    server.sendall(head + body)
                    started = code not in (_SSL_REQUEST, _GSSENC_REQUEST)
                    continue
                head = take(5)
                if head is None:
                    break
                kind, length = head[:1], struct.unpack("!i", head[1:])[0]
                body = take(length - 4)
                if body is None:
                    break
                if kind == b"Q":
                    self._record(body.rstrip(b"\x00").decode())
                elif kind == b"P":  # name \0 query \0 ...
                    self._record("parse: " + body.split(b"\x00")[1].decode())
                server.sendall(head + body)
        except OSError:
            pass
        for s in (client, server):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def _record(self, query: str) -> None:
        with self._lock:
            self._queries.append(query)
