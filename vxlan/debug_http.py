"""``/debug/capture?seconds=N[&filter=...]``: a pcapng stream of a running daemon's traffic.

Like Go's pprof endpoints: ``curl -o x.pcapng 'host:2401/debug/capture?seconds=5'`` works
without a restart. A capture exposes tenant traffic, so ``/debug/*`` answers loopback clients
only, unless ``--debug-allow CIDR`` widens it; everyone else gets 403.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable

from aiohttp import web

from vxlan.capture import CaptureHub, Filter, StreamSink, pcapng_header

MAX_SECONDS = 300


def allowed(remote: str | None, allow: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        addr = ipaddress.ip_address((remote or "").split("%")[0])
    except ValueError:
        return False
    if addr.is_loopback or getattr(addr, "ipv4_mapped", None) and addr.ipv4_mapped.is_loopback:
        return True
    return any(addr in net for net in allow if addr.version == net.version)


def add_routes(app: web.Application, get_hub: Callable[[], CaptureHub | None], allow: list) -> None:
    """``get_hub`` is read per request: the server is up before the data plane exists."""
    async def capture(request: web.Request) -> web.StreamResponse:
        if not allowed(request.remote, allow):
            raise web.HTTPForbidden(text="/debug is for loopback clients (see --debug-allow)\n")
        hub = get_hub()
        if hub is None:
            raise web.HTTPServiceUnavailable(text="capture needs the compiled vxlan data plane, started\n")
        try:
            seconds = float(request.query.get("seconds", "5"))
            if not 0 < seconds <= MAX_SECONDS:
                raise ValueError(f"seconds must be in (0, {MAX_SECONDS}]")
            capture_filter = Filter.parse(request.query.get("filter"))
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from None
        sink = StreamSink(asyncio.get_running_loop(), capture_filter)
        response = web.StreamResponse(headers={
            "Content-Type": "application/x-pcapng",
            "Content-Disposition": 'attachment; filename="vxland.pcapng"'})
        await response.prepare(request)
        await response.write(pcapng_header(hub.snaplen))
        hub.add(sink)
        deadline = time.monotonic() + seconds
        try:
            while (left := deadline - time.monotonic()) > 0:
                try:
                    data = await asyncio.wait_for(sink.queue.get(), min(left, 0.5))
                except TimeoutError:
                    continue
                sink.taken(data)
                await response.write(data)
        finally:
            hub.remove(sink)
            while not sink.queue.empty():
                data = sink.queue.get_nowait()
                await response.write(data)
        await response.write_eof()
        return response

    app.router.add_get("/debug/capture", capture)
