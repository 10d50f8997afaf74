"""A small HTTP/1.1 client for etcd's v2 keys API, on asyncio streams.

Timeouts are ``asyncio.timeout`` blocks, not ``asyncio.wait_for``: on Python 3.11 the latter
can swallow a cancellation that arrives as the awaited read completes, and a daemon whose
lease renewal does one request after another then never stops.

What the v2 store needs and no more: requests with a query and an urlencoded form, plain or
TLS (client certificates), keep-alive (a busy v2 watch polls once per event), bodies delimited
by Content-Length, by chunked transfer coding (RFC 9112 §7.1; etcd streams a watch's body and
a long listing that way) or by the connection's end, and an answer whose head is read now and
whose body later (a long-poll). aiohttp did this at the price of 9 MB in every node, also in
those that only look for a v2 config and then use v3.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlencode

from vxlan.registry.store import Endpoint

MAX_HEAD = 65536
IDLE_MAX = 16  # idle connections kept per endpoint (the daemon needs two; a seeding tool more)
MAX_BODY = 256 << 20  # a /8 of v2 leases is ~15 MB


class HttpClientError(Exception):
    """The connection failed, timed out, or the answer was no HTTP/1.x (the caller fails over)."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    _conn: _Connection | None = field(default=None, repr=False)

    async def read(self) -> bytes:
        """The body (once); the connection goes back for reuse if the server keeps it."""
        conn, self._conn = self._conn, None
        if conn is None:
            raise HttpClientError("body already read")
        try:
            body = await conn.read_body(self.headers)
        except BaseException:
            conn.close()
            raise
        conn.release(self.headers)
        return body

    def close(self) -> None:
        """Give up on the body: the connection is closed, not reused."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class _Connection:
    def __init__(self, client: HttpClient, key: str, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.client, self.key, self.reader, self.writer = client, key, reader, writer

    async def read_body(self, headers: dict[str, str]) -> bytes:
        reader = self.reader
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts, size = [], 0
            while True:
                line = await reader.readuntil(b"\r\n")
                n = int(line.split(b";", 1)[0].strip() or b"x", 16)  # ValueError: not a chunk size
                if n == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailer fields
                        pass
                    return b"".join(parts)
                size += n
                if size > MAX_BODY:
                    raise HttpClientError("body too large")
                parts.append(await reader.readexactly(n))
                if await reader.readexactly(2) != b"\r\n":
                    raise HttpClientError("bad chunk")
        if "content-length" in headers:
            n = int(headers["content-length"])
            if not 0 <= n <= MAX_BODY:
                raise HttpClientError("bad Content-Length")
            return await reader.readexactly(n)
        headers["connection"] = "close"  # delimited by the connection's end
        body = await reader.read(MAX_BODY + 1)
        rest = body
        while rest:
            rest = await reader.read(MAX_BODY + 1 - len(body))
            body += rest
        if len(body) > MAX_BODY:
            raise HttpClientError("body too large")
        return body

    def release(self, headers: dict[str, str]) -> None:
        idle = self.client._idle.setdefault(self.key, [])
        if headers.get("connection", "").lower() == "close" or len(idle) >= IDLE_MAX:
            self.close()
        else:
            idle.append(self)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class HttpClient:
    def __init__(self, tls: ssl.SSLContext | None, headers: dict[str, str]) -> None:
        self.tls = tls
        self.headers = headers
        self._idle: dict[str, list[_Connection]] = {}

    async def _connect(self, ep: Endpoint, timeout_s: float, fresh: bool) -> _Connection:
        key = ep.base
        idle = [] if fresh else self._idle.get(key, [])
        while idle:
            conn = idle.pop()
            if not conn.reader.at_eof() and not conn.writer.is_closing():
                return conn
            conn.close()
        host = ep.host.strip("[]")
        context = (self.tls or ssl.create_default_context()) if ep.secure else None
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, ep.port, ssl=context,
                                                           server_hostname=host if context else None, limit=MAX_HEAD)
        return _Connection(self, key, reader, writer)

    async def request(self, ep: Endpoint, method: str, path: str, query: dict[str, str] | None = None,
                      form: dict[str, str] | None = None, timeout_s: float = 3.0) -> Answer:
        """Send a request and read the answer's head within ``timeout_s``; the body is the
        caller's to ``read()`` (or ``close()``). HttpClientError for anything but an answer."""
        target = path + ("?" + urlencode(query) if query else "")
        body = urlencode(form).encode() if form is not None else b""
        lines = [f"{method} {target} HTTP/1.1", f"Host: {ep.host}:{ep.port}", "Accept: application/json",
                 *(f"{name}: {value}" for name, value in self.headers.items())]
        if form is not None:
            lines += ["Content-Type: application/x-www-form-urlencoded", f"Content-Length: {len(body)}"]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        for fresh in (False, True):  # an idle connection the server closed meanwhile: once more, fresh
            conn = await self._open(ep, timeout_s, fresh)
            try:
                conn.writer.write(request)
                async with asyncio.timeout(timeout_s):
                    head = await conn.reader.readuntil(b"\r\n\r\n")
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                conn.close()
                if fresh or isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                    raise HttpClientError(f"{exc.__class__.__name__}: {exc}") from None
                continue
            except (asyncio.LimitOverrunError, TimeoutError) as exc:
                conn.close()
                raise HttpClientError(exc.__class__.__name__) from None
            status, headers = _parse_head(head)
            return Answer(status, headers, conn)
        raise HttpClientError("unreachable")  # pragma: no cover

    async def _open(self, ep: Endpoint, timeout_s: float, fresh: bool) -> _Connection:
        try:
            return await self._connect(ep, timeout_s, fresh)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise HttpClientError(f"{exc.__class__.__name__}: {exc}") from None

    async def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HttpClientError(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers
