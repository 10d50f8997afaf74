"""vxlan.httpserve on loopback: routes, methods, HEAD, limits, a streamed response ended by the
client or by the server's close."""

from __future__ import annotations

import asyncio

import pytest

from vxlan.httpserve import ANY_METHOD, MAX_HEAD, HttpError, HttpServer, Response, parse_head, parse_target


async def exchange(port: int, raw: bytes, read_s: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), read_s)
    finally:
        writer.close()


async def serving(server: HttpServer) -> int:
    await server.start("127.0.0.1", 0)
    assert server._server is not None
    return server._server.sockets[0].getsockname()[1]


def test_routes_methods_and_errors():
    async def main():
        server = HttpServer()

        async def hello(request):
            return Response.text(f"hi {request.query.get('name', '?')} from {request.remote}")
        server.route("/hello", hello)
        server.route("/any", hello, ANY_METHOD)
        port = await serving(server)
        try:
            ok = await exchange(port, b"GET /hello?name=a%20b&name=c HTTP/1.1\r\nHost: x\r\n\r\n")
            assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" in ok
            assert ok.endswith(b"\r\n\r\nhi a b from 127.0.0.1") and b"Content-Length: 21" in ok
            head = await exchange(port, b"HEAD /hello HTTP/1.0\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK") and head.endswith(b"\r\n\r\n")
            assert (await exchange(port, b"POST /hello HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
            assert (await exchange(port, b"POST /any HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 200")
            assert (await exchange(port, b"GET /nope HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
            assert (await exchange(port, b"GET /hello HTTP/2.0\r\n\r\n")).startswith(b"HTTP/1.1 505")
            assert (await exchange(port, b"GET /hello HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")).startswith(
                b"HTTP/1.1 413")
            big = b"GET /hello HTTP/1.1\r\nX: " + b"a" * MAX_HEAD + b"\r\n\r\n"
            assert (await exchange(port, big)).startswith(b"HTTP/1.1 431")
            assert await exchange(port, b"GET /hel") == b""  # a client that never finishes: closed
        finally:
            await server.close()
    import vxlan.httpserve as hs
    hs.HEAD_TIMEOUT_S, saved = 0.3, hs.HEAD_TIMEOUT_S
    try:
        asyncio.run(main())
    finally:
        hs.HEAD_TIMEOUT_S = saved


def test_a_stream_ends_with_its_client_and_with_the_server():
    async def main():
        server = HttpServer()
        cleaned = []

        async def ticks():
            try:
                for i in range(1000):
                    yield f"{i}\n".encode()
                    await asyncio.sleep(0.01)
            finally:
                cleaned.append(True)

        async def stream(_request):
            return Response(content_type="text/plain", stream=ticks())
        server.route("/s", stream)
        port = await serving(server)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /s HTTP/1.1\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"Content-Length" not in head and b"0\n" == await reader.readline()
        writer.close()  # the client goes away: the stream's clean-up runs
        for _ in range(100):
            if cleaned:
                break
            await asyncio.sleep(0.02)
        assert cleaned == [True]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /s HTTP/1.1\r\n\r\n")
        await reader.readline()
        await server.close()  # shutting down ends the open stream too
        assert await asyncio.wait_for(reader.read(), 2) is not None and len(cleaned) == 2
    asyncio.run(main())


@pytest.mark.parametrize("head", [b"GET / HTTP/1.1 x", b"get / HTTP/1.1\r\n\r\n", b"GET  / HTTP/1.1\r\n\r\n",
                                  b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", b"GET / HTTP/1.1\r\n x: y\r\n\r\n"])
def test_bad_heads_are_400(head):
    with pytest.raises(HttpError) as exc:
        method, target, _ = parse_head(head + b"\r\n\r\n" if not head.endswith(b"\r\n\r\n") else head)
        parse_target(target)
    assert exc.value.status in (400, 505)


def test_target_must_be_a_path():
    with pytest.raises(HttpError):
        parse_target("http://elsewhere/metrics")
    assert parse_target("/debug/capture?seconds=3&filter=") == ("/debug/capture", {"seconds": "3", "filter": ""})
