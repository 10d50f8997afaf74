"""``/debug/capture?seconds=N[&filter=...]``: a pcapng stream of a running daemon's traffic.

Like Go's pprof endpoints: ``curl -o x.pcapng 'host:2401/debug/capture?seconds=5'`` works
without a restart. A capture exposes tenant traffic, so ``/debug/*`` answers loopback clients
only, unless ``--debug-allow CIDR`` widens it; everyone else gets 403.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import AsyncIterator, Callable

from vxlan.capture import CaptureHub, Filter, StreamSink, pcapng_header
from vxlan.httpserve import HttpServer, Request, Response

MAX_SECONDS = 300


def allowed(remote: str | None, allow: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        addr = ipaddress.ip_address((remote or "").split("%")[0])
    except ValueError:
        return False
    if addr.is_loopback or getattr(addr, "ipv4_mapped", None) and addr.ipv4_mapped.is_loopback:
        return True
    return any(addr in net for net in allow if addr.version == net.version)


def add_routes(server: HttpServer, get_hub: Callable[[], CaptureHub | None], allow: list) -> None:
    """``get_hub`` is read per request: the server is up before the data plane exists."""
    async def capture(request: Request) -> Response:
        if not allowed(request.remote, allow):
            return Response.text("/debug is for loopback clients (see --debug-allow)\n", 403)
        hub = get_hub()
        if hub is None:
            return Response.text("capture needs the compiled vxlan data plane, started\n", 503)
        try:
            seconds = float(request.query.get("seconds", "5"))
            if not 0 < seconds <= MAX_SECONDS:
                raise ValueError(f"seconds must be in (0, {MAX_SECONDS}]")
            capture_filter = Filter.parse(request.query.get("filter"))
        except ValueError as exc:
            return Response.text(f"{exc}\n", 400)
        return Response(content_type="application/x-pcapng",
                        headers={"Content-Disposition": 'attachment; filename="vxland.pcapng"'},
                        stream=_records(hub, StreamSink(asyncio.get_running_loop(), capture_filter), seconds))

    server.route("/debug/capture", capture)


async def _records(hub: CaptureHub, sink: StreamSink, seconds: float) -> AsyncIterator[bytes]:
    """The pcapng stream: the header, then what the sink takes for ``seconds``."""
    yield pcapng_header(hub.snaplen)
    hub.add(sink)
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            try:
                data = await asyncio.wait_for(sink.queue.get(), min(left, 0.5))
            except TimeoutError:
                continue
            sink.taken(data)
            yield data
    finally:
        hub.remove(sink)
    while not sink.queue.empty():
        yield sink.queue.get_nowait()
