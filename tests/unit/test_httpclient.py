"""vxlan.registry.httpclient against a scripted server on loopback: the three ways a body ends,
keep-alive reuse, a dead idle connection retried fresh, an abandoned long-poll not reused."""

from __future__ import annotations

import asyncio

import pytest

from vxlan.registry.httpclient import HttpClient, HttpClientError
from vxlan.registry.store import parse_endpoints

ANSWERS = {
    "/length": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Etcd-Index: 7\r\n\r\nhello",
    "/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nhel\r\n2\r\nlo\r\n0\r\nT: x\r\n\r\n",
    "/close": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello",
    "/bye": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",  # and the server hangs up after it
}


async def scripted_server():
    connections = []

    async def handle(reader, writer):
        connections.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ")[1].decode().split("?")[0]
                if path == "/slow":
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    await writer.drain()
                    await asyncio.sleep(10)
                writer.write(ANSWERS[path])
                await writer.drain()
                if path in ("/close", "/bye"):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, connections


def test_bodies_keep_alive_and_reconnects():
    async def main():
        server, connections = await scripted_server()
        port = server.sockets[0].getsockname()[1]
        ep = parse_endpoints(f"http://127.0.0.1:{port}")[0]
        client = HttpClient(None, {"Authorization": "Basic eDp5"})
        try:
            for path in ("/length", "/chunked", "/length"):
                answer = await client.request(ep, "GET", path, {"quorum": "true"})
                assert answer.status == 200 and await answer.read() == b"hello"
            assert len(connections) == 1  # one connection for all three
            assert answer.headers["x-etcd-index"] == "7"
            answer = await client.request(ep, "GET", "/close")
            assert await answer.read() == b"hello" and len(connections) == 1
            answer = await client.request(ep, "PUT", "/length", None, {"value": "{}", "ttl": "60"})
            assert await answer.read() == b"hello" and len(connections) == 2  # the closed one is not reused
            answer = await client.request(ep, "GET", "/bye")
            assert await answer.read() == b"ok"
            await asyncio.sleep(0.05)  # the server hung up on the idle connection: a new one
            answer = await client.request(ep, "GET", "/length")
            assert await answer.read() == b"hello" and len(connections) == 3
            answer = await client.request(ep, "GET", "/slow")  # a long-poll abandoned
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(answer.read(), 0.2)
            answer = await client.request(ep, "GET", "/length")
            assert await answer.read() == b"hello" and len(connections) == 4  # not the abandoned one
        finally:
            await client.close()
            server.close()

    asyncio.run(main())


def test_nothing_listening_is_a_client_error():
    async def main():
        client = HttpClient(None, {})
        with pytest.raises(HttpClientError):
            await client.request(parse_endpoints("http://127.0.0.1:9")[0], "GET", "/version", timeout_s=1)
    asyncio.run(main())
