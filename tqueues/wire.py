"""The worker's connection to the dispatcher: HTTP/1.1 with keep-alive, and websockets.

A worker only ever speaks to its dispatcher: JSON requests (register, claim, complete,
heartbeat, logs) and one websocket (the abort feed). This client does exactly that on asyncio
streams, without aiohttp: a worker process starts in about half the time (aiohttp's import,
with the TLS contexts it builds on import, is most of a worker's start-up), and each request
costs a fraction of a general-purpose client's. :class:`tqueues.Client` opens its enqueue
websocket (``GET /api/v1/enqueue``) with it too.

Requests reuse idle keep-alive connections (any number at once: a long-poll claim holds one
while outcomes go out on another). A request that fails, times out or is cancelled closes its
connection, so a half-read answer is never mistaken for the next one. Errors are
:class:`~tqueues.errors.ClientError` with the codes ``Client.request`` uses: ``timeout``,
``unreachable``, or the dispatcher's own error code with its HTTP status.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from typing import Any, Mapping
from urllib.parse import urlencode, urlsplit

from . import models
from .errors import ClientError, ConfigurationError, error_from

MAX_HEAD = 64 * 1024             # bytes of a status line and headers
MAX_MESSAGE = 64 * 1024 * 1024   # bytes of one websocket message
WRITE_BUFFER = 64 * 1024         # unsent bytes past which a websocket sender waits
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class ProtocolError(Exception):
    """The other end broke HTTP or the websocket protocol."""


# What a connection that dropped, or a server that broke the protocol, raises on the way.
_BROKEN = (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ProtocolError, ValueError)


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def usable(self) -> bool:
        """Still open, with nothing unread (an idle connection the server closed has seen EOF)."""
        return not (self.writer.is_closing() or self.reader.at_eof() or self.reader._buffer)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.writer.close()


class Wire:
    """HTTP/1.1 requests and websockets to one dispatcher (``endpoint_url``, http or https)."""

    def __init__(self, endpoint_url: str, *, token: str | None = None, cafile: str | None = None,
                 timeout: float = 30.0) -> None:
        self.endpoint_url = endpoint_url.rstrip("/") + "/"
        parts = urlsplit(self.endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"endpoint URL must be http:// or https:// with a host, not {endpoint_url!r}")
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        try:
            self._port = parts.port or (443 if self._tls else 80)
        except ValueError:
            raise ConfigurationError(f"endpoint URL has a bad port: {endpoint_url!r}") from None
        self._path = parts.path   # ends with "/"
        self._cafile = cafile
        self._ssl: Any = None     # the TLS context, made on the first https connection
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        host = parts.netloc.rpartition("@")[2]
        self._head_tail = f"Host: {host}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        self._idle: list[_Conn] = []
        self._open: set[_Conn] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"<tqueues.wire.Wire {self.endpoint_url}>"   # never the token

    async def close(self) -> None:
        """Close every connection (a request still running fails as unreachable)."""
        self._closed = True
        self._idle.clear()
        conns, self._open = self._open, set()
        for conn in conns:
            conn.close()

    # ------------------------------------------------------------------ requests

    async def request(self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None,
                      timeout: float | None = None) -> Any:
        """Call the dispatcher; the decoded JSON answer, or ClientError naming what went wrong."""
        url, target = self._where(path, params)
        if json is not None:
            body = models.dumps(json)
            head = (f"{method} {target} HTTP/1.1\r\n{self._head_tail}"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        else:
            body = b""
            head = f"{method} {target} HTTP/1.1\r\n{self._head_tail}" + (
                "Content-Length: 0\r\n\r\n" if method in ("POST", "PUT", "PATCH") else "\r\n")
        limit = timeout or self.timeout
        status, answer = await self._within(limit, f"{method} {url}", self._exchange(head.encode() + body, method, url))
        decoded = models.json_or_none(answer)
        if status >= 300:   # the dispatcher answers no redirects: one is a proxy's, not followed
            raise error_from(status, decoded, f"{method} {url}")
        return decoded

    def _where(self, path: str, params: Mapping[str, Any] | None) -> tuple[str, str]:
        """The URL of ``path`` (for messages) and the request target sent for it."""
        path = path.lstrip("/")
        return self.endpoint_url + path, self._path + path + ("?" + urlencode(params) if params else "")

    async def _exchange(self, data: bytes, method: str, url: str) -> tuple[int, bytes]:
        conn = self._take() or await self._connect(f"{method} {url}")
        keep = False
        try:
            conn.writer.write(data)
            if conn.writer.transport.get_write_buffer_size() > 65536:
                await conn.writer.drain()
            status, headers, version = await _read_head(conn.reader)
            while 100 <= status < 200:   # an interim answer (100 Continue): the real one follows
                status, headers, version = await _read_head(conn.reader)
            body, keep = await _read_body(conn.reader, method, status, headers, version)
            return status, body
        except _BROKEN as exc:
            raise ClientError(f"{method} {url}: {_describe(exc)}", status=0, code="unreachable") from None
        finally:
            if keep and not self._closed:
                self._idle.append(conn)
            else:
                self._drop(conn)

    def _take(self) -> _Conn | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable():
                return conn
            self._drop(conn)
        return None

    def _drop(self, conn: _Conn) -> None:
        self._open.discard(conn)
        conn.close()

    async def _connect(self, what: str) -> _Conn:
        if self._closed:
            raise ClientError(f"{what}: the connection is closed", status=0, code="unreachable")
        tls: Any = None
        if self._tls:
            if self._ssl is None:
                import ssl
                self._ssl = ssl.create_default_context(cafile=self._cafile)
            tls = self._ssl
        try:
            reader, writer = await asyncio.open_connection(self._host, self._port, ssl=tls, limit=MAX_HEAD,
                                                           server_hostname=self._host if tls else None)
        except (OSError, ValueError) as exc:
            raise ClientError(f"{what}: cannot connect to {self._host}:{self._port}: {_describe(exc)}",
                              status=0, code="unreachable") from None
        conn = _Conn(reader, writer)
        self._open.add(conn)
        return conn

    async def _within(self, seconds: float, what: str, work: Any) -> Any:
        """Await ``work`` for at most ``seconds`` (ClientError ``timeout`` after), in this task."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        timer = loop.call_later(seconds, expire)
        try:
            return await work
        except asyncio.CancelledError:
            if not expired:
                raise
            uncancel = getattr(task, "uncancel", None)   # Python 3.11+
            if uncancel is not None and uncancel() > 0:
                raise   # cancelled from outside as well: that cancellation goes on
            raise ClientError(f"{what}: no answer within {seconds:g} s", status=0, code="timeout") from None
        finally:
            timer.cancel()

    # ------------------------------------------------------------------ websockets

    async def websocket(self, path: str, params: Mapping[str, Any] | None = None, *,
                        heartbeat: float = 30.0, timeout: float | None = None) -> "WebSocket":
        """Open a websocket to ``path`` (the opening handshake within ``timeout`` seconds)."""
        url, target = self._where(path, params)
        key = base64.b64encode(os.urandom(16))
        head = (f"GET {target} HTTP/1.1\r\n{self._head_tail}Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
        return await self._within(timeout or self.timeout, f"GET {url}", self._upgrade(head, key, url, heartbeat))

    async def _upgrade(self, head: bytes, key: bytes, url: str, heartbeat: float) -> "WebSocket":
        what = f"GET {url}"
        conn = await self._connect(what)
        try:
            conn.writer.write(head)
            status, headers, version = await _read_head(conn.reader)
            if status != 101:
                body, _ = await _read_body(conn.reader, "GET", status, headers, version)
                raise error_from(status, models.json_or_none(body), what) if status >= 400 else ClientError(
                    f"{what}: HTTP {status} instead of a websocket", status=status, code="http_error")
            accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
            if headers.get("sec-websocket-accept") != accept or headers.get("upgrade", "").lower() != "websocket":
                raise ProtocolError("the server did not accept the websocket handshake")
        except BaseException as exc:
            self._drop(conn)
            if isinstance(exc, _BROKEN):
                raise ClientError(f"{what}: {_describe(exc)}", status=0, code="unreachable") from None
            raise
        return WebSocket(self, conn, heartbeat)


class WebSocket:
    """A client websocket: ``receive()`` text messages until it returns None (closed).

    Pings from the server are answered; every ``heartbeat`` seconds without a frame from the
    server a ping is sent, and a server that does not answer within half that is taken for
    gone (the socket closes, as when the connection drops)."""

    def __init__(self, wire: Wire, conn: _Conn, heartbeat: float) -> None:
        self._wire = wire
        self._conn = conn
        self._heartbeat = heartbeat
        self._loop = asyncio.get_running_loop()
        self._seen = self._loop.time()          # when the last frame came from the server
        self._pinged: float | None = None       # when our unanswered ping went out
        self.closed = False
        self.close_code: int | None = None
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(heartbeat, self._watch)

    async def __aenter__(self) -> "WebSocket":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> "WebSocket":
        return self

    async def __anext__(self) -> str:
        message = await self.receive()
        if message is None:
            raise StopAsyncIteration
        return message

    async def receive(self) -> str | None:
        """The next text message (binary ones are decoded as UTF-8), or None once closed."""
        parts: list[bytes] = []
        size = 0
        reader = self._conn.reader
        try:
            while not self.closed:
                first, second = await reader.readexactly(2)
                self._seen = self._loop.time()   # (the heartbeat's timer looks at it when it fires)
                opcode, length = first & 0x0F, second & 0x7F
                if length == 126:
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                elif length == 127:
                    (length,) = struct.unpack("!Q", await reader.readexactly(8))
                mask = await reader.readexactly(4) if second & 0x80 else None
                if opcode >= 8 and length > 125:
                    raise ProtocolError("a control frame longer than 125 bytes")
                size += length
                if size > MAX_MESSAGE:
                    self._send(8, struct.pack("!H", 1009))
                    raise ProtocolError(f"a message larger than {MAX_MESSAGE} bytes")
                payload = await reader.readexactly(length) if length else b""
                if mask is not None:
                    payload = _masked(payload, mask)
                if opcode == 9:      # ping
                    self._send(10, payload)
                elif opcode == 8:    # close: answered, then the connection ends
                    self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    self._send(8, payload[:2])
                    self._shut()
                elif opcode in (0, 1, 2):
                    parts.append(payload)
                    if first & 0x80:
                        return b"".join(parts).decode("utf-8", "replace")
                elif opcode != 10:   # pongs only re-arm the heartbeat
                    raise ProtocolError(f"unknown websocket opcode {opcode}")
        except (OSError, EOFError, asyncio.IncompleteReadError, ProtocolError):
            self._shut()
        return None

    async def close(self, code: int = 1000) -> None:
        if not self.closed:
            self._send(8, struct.pack("!H", code))
            self._shut()

    async def send_text(self, text: str) -> None:
        """Send one text message; waits only while the other end is slow to read (more than
        WRITE_BUFFER bytes unsent). ConnectionError once the socket is closed."""
        if self.closed or self._conn.writer.is_closing():
            raise ConnectionError("the websocket is closed")
        self._send(1, text.encode())
        writer = self._conn.writer
        if writer.transport.get_write_buffer_size() > WRITE_BUFFER:
            await writer.drain()

    def _send(self, opcode: int, payload: bytes) -> None:
        """One masked frame (clients mask every frame they send)."""
        if self._conn.writer.is_closing():
            return
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 0x10000:
            head = bytes((0x80 | opcode, 0x80 | 126)) + struct.pack("!H", n)
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + struct.pack("!Q", n)
        self._conn.writer.write(head + mask + _masked(payload, mask))

    def _watch(self) -> None:
        """The heartbeat's one timer. It is not re-armed for every frame (a busy socket would
        pile cancelled timers onto the loop's heap, two per message): it looks at when the
        last frame came, pings after ``heartbeat`` quiet seconds, and shuts the socket when
        nothing at all has come back half a heartbeat after the ping."""
        self._timer = None
        if self.closed:
            return
        now = self._loop.time()
        if self._pinged is not None and self._seen < self._pinged:
            if now - self._pinged >= self._heartbeat / 2:
                self._shut()   # no answer: gone
                return
            wait = self._pinged + self._heartbeat / 2 - now
        else:
            self._pinged = None
            wait = self._seen + self._heartbeat - now
            if wait <= 0:
                self._send(9, b"")
                self._pinged = now
                wait = self._heartbeat / 2
        self._timer = self._loop.call_later(wait, self._watch)

    def _shut(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wire._drop(self._conn)


def _masked(data: bytes, mask: bytes) -> bytes:
    if not data:
        return data
    n = len(data)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
    return (int.from_bytes(data, "little") ^ key).to_bytes(n, "little")


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and HTTP version of the next answer."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise ProtocolError("the server closed the connection") from None
        raise
    lines = raw[:-4].split(b"\r\n")
    status_line = lines[0].split(b" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1.") or not status_line[1].isdigit():
        raise ProtocolError(f"not an HTTP answer: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise ProtocolError(f"a malformed header line: {line[:80]!r}")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return int(status_line[1]), headers, status_line[0]


async def _read_body(reader: asyncio.StreamReader, method: str, status: int, headers: dict[str, str],
                     version: bytes) -> tuple[bytes, bool]:
    """The answer's body, and whether the connection may carry another request."""
    connection = headers.get("connection", "").lower()
    keep = "close" not in connection if version == b"HTTP/1.1" else "keep-alive" in connection
    if method == "HEAD" or status in (204, 304):
        return b"", keep
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip() or b"x", 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":   # trailers, if any
                    pass
                return b"".join(chunks), keep
            chunks.append(await reader.readexactly(size))
            if await reader.readexactly(2) != b"\r\n":
                raise ProtocolError("a malformed chunk")
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ProtocolError(f"a bad Content-Length: {length[:40]!r}")
        return (await reader.readexactly(int(length)) if length != "0" else b""), keep
    return await reader.read(), False   # until the server closes


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "the server closed the connection in the middle of an answer"
    if isinstance(exc, asyncio.LimitOverrunError):
        return "the answer's headers are too large"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    text = str(exc)
    return text or type(exc).__name__


__all__ = ["ProtocolError", "WebSocket", "Wire"]
