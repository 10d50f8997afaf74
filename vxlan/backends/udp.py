"""flannel's udp backend (``pkg/backend/udp/``): TUN ``flannel0``, bare IP packets over UDP,
the per-packet rules of its proxy (``vxlan.udpbackend.UdpCodec``), the pure-Python loop."""

from __future__ import annotations

from vxlan.backends import TUNNEL, Context, StartupError
from vxlan.backends.tunnel import TunnelBackend
from vxlan.dataplane import DataPlane
from vxlan.lease import Lease
from vxlan.udpbackend import UdpCodec


class UdpBackend(TunnelBackend):
    name = "udp"
    peer_type = None

    def precheck(self, opts, iface, public_ip: str) -> None:
        if opts.capture is not None or opts.trace_rate:
            raise StartupError("--capture and --trace need the vxlan backend (the udp backend has no capture hook)")

    async def start(self, ctx: Context) -> None:
        self.ctx = ctx
        port = ctx.config.backend.port
        self.codec = UdpCodec(ctx.own.subnet.network_address, ctx.config.subnet_len, port,
                              strict_source=ctx.opts.strict_source)
        sock = self.open_socket(ctx, port, "flanneld's udp backend or another vxland on this port?")
        # "flannel%d", as flannel's ip.OpenTun: the kernel picks flannel0, flannel1 ...
        tun = await self.open_tun(ctx, ctx.opts.tun_name or "flannel%d", False)
        self.run(ctx, DataPlane(self.codec, tun.fd, sock))

    async def add_peer(self, lease: Lease) -> str:
        await self.tunnel_to(lease)
        self.codec.set_peer(lease.network_address, None, lease.public_ip)
        return TUNNEL

    def describe(self, lease: Lease, how: str) -> str:
        return "udp"

    def started(self) -> tuple[str, str]:
        return f"backend {self.name}", ""
