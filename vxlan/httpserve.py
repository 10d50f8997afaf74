"""A small HTTP/1.1 server for vxland's few endpoints, on asyncio streams.

aiohttp's server cost a node 16 MB of memory (as much as 20,000 leases) for five GET
endpoints. This serves exactly what they need: one request per connection (the response says
``Connection: close``, RFC 9112 §9.6), the request head within ``MAX_HEAD`` bytes and
``HEAD_TIMEOUT_S`` seconds, no request body, a response with a length or one streamed until
the connection closes (RFC 9112 §6.3, rule 8). What it does not take gets the 4xx a client can
act on; the parser is pure (``parse_head``) and fuzzed (tests/fuzz/targets.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote, urlsplit

log = logging.getLogger(__name__)

MAX_HEAD = 8192  # request line and headers
HEAD_TIMEOUT_S = 10.0
ANY_METHOD = frozenset()  # a route that answers every method (/healthz, as flanneld's)


class HttpError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # percent-decoded
    query: dict[str, str]  # the first value of each name
    remote: str | None = None  # the client's address


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    stream: AsyncIterator[bytes] | None = None  # instead of body: sent until it ends, then close

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status=status, body=text.encode())


Handler = Callable[[Request], Awaitable[Response]]


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """The request line and headers (``head`` ends with the blank line) -> (method, target,
    headers by lower-case name). HttpError for what is no HTTP/1.x request."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # latin-1 decodes every byte; kept for the type checker
        raise HttpError(400, "bad request") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[0].isupper() or not parts[1]:
        raise HttpError(400, "bad request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(505, "HTTP/1.0 and HTTP/1.1 only")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or any(c in name for c in " \t"):
            raise HttpError(400, "bad header line")
        headers[name.lower()] = value.strip()
    if "content-length" in headers and headers["content-length"] != "0" or "transfer-encoding" in headers:
        raise HttpError(413, "no request body is taken here")
    return method, target, headers


def parse_target(target: str) -> tuple[str, dict[str, str]]:
    """An origin-form target -> (percent-decoded path, first value of each query name)."""
    if not target.startswith("/"):
        raise HttpError(400, "the target must be a path")
    parts = urlsplit(target)
    query: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        query.setdefault(name, value)
    return unquote(parts.path), query


class HttpServer:
    def __init__(self) -> None:
        self.routes: dict[str, tuple[frozenset[str], Handler]] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    def route(self, path: str, handler: Handler, methods: frozenset[str] = frozenset({"GET", "HEAD"})) -> None:
        self.routes[path] = (methods, handler)

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD)

    async def close(self) -> None:
        """Stop listening and end the requests still open (a capture stream, say)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            response, method = await self._respond(reader, writer)
            await self._send(writer, response, method)
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client went away, or we are shutting down
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[Response, str]:
        try:
            try:
                async with asyncio.timeout(HEAD_TIMEOUT_S):
                    head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                raise HttpError(431, "request head too large") from None
            except (asyncio.IncompleteReadError, TimeoutError):
                raise ConnectionResetError from None
            method, target, _ = parse_head(head)
            path, query = parse_target(target)
            route = self.routes.get(path)
            if route is None:
                raise HttpError(404, "not found")
            methods, handler = route
            if methods and method not in methods:
                raise HttpError(405, f"{method} is not allowed here")
            peer = writer.get_extra_info("peername")
            remote = peer[0] if isinstance(peer, tuple) and peer else None
            return await handler(Request(method, path, query, remote)), method
        except HttpError as exc:
            return Response.text(f"{exc.text}\n", exc.status), "GET"

    async def _send(self, writer: asyncio.StreamWriter, response: Response, method: str) -> None:
        try:
            reason = HTTPStatus(response.status).phrase
        except ValueError:
            reason = ""
        head = [f"HTTP/1.1 {response.status} {reason}", f"Content-Type: {response.content_type}",
                "Connection: close"]
        head += [f"{name}: {value}" for name, value in response.headers.items()]
        if response.stream is None:
            head.append(f"Content-Length: {len(response.body)}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        if method == "HEAD":
            if response.stream is not None:
                await response.stream.aclose()
            await writer.drain()
            return
        if response.stream is None:
            writer.write(response.body)
            await writer.drain()
            return
        try:
            async for chunk in response.stream:
                writer.write(chunk)
                await writer.drain()
        finally:
            await response.stream.aclose()  # its clean-up runs also when the client left
