# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled data plane: ``Codec`` (the twin of ``vxlan.wire.Codec``, same API and bytes) and
``Engine`` (the Codec plus the two I/O loops, run by threads without the GIL).

Why hand-written: this is the per-packet work. The logic lives in C (``vx_*.c``, see ``vxengine.h``): a peer
hash table updated under a mutex by ``set_peer``/``remove_peer``, the receive checks, the
Internet checksum, TCP segmentation of TUN super-packets and GRO coalescing, and loops that
move whole batches per system call (``recvmmsg``, ``sendmmsg``, ``UDP_SEGMENT``, ``UDP_GRO``,
``IFF_VNET_HDR``). Counters are kept in C and read by ``/metrics``. Module-level helpers
(``checksum``, ``tso_split``, ``gro_coalesce``) expose the offload code to the tests.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.errno cimport errno
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy

import ipaddress
import os
import socket

from vxlan import wire
from vxlan.wire import DropReason


cdef extern from "netinet/in.h":
    cdef struct in_addr:
        uint32_t s_addr
    cdef struct sockaddr_in:
        int sin_family
        uint16_t sin_port
        in_addr sin_addr
    cdef struct in6_addr:
        pass
    cdef struct sockaddr_in6:
        int sin6_family
        uint16_t sin6_port
        in6_addr sin6_addr

cdef extern from "sys/uio.h":
    cdef struct iovec:
        void *iov_base
        size_t iov_len

cdef extern from "arpa/inet.h" nogil:
    uint16_t ntohs(uint16_t)
    uint16_t htons(uint16_t)

cdef extern from "vxengine.h" nogil:
    cdef struct vx_vnet_hdr:
        uint8_t flags
        uint8_t gso_type
        uint16_t hdr_len
        uint16_t gso_size
        uint16_t csum_start
        uint16_t csum_offset

cdef extern from "vx_internal.h" nogil:
    ctypedef struct vx_frame:
        int v6
        uint8_t saddr6[16]
        uint32_t saddr, daddr
        uint16_t sport, dport
        int udp_off, vx_off, vx_len
    int vx_frame_outer(const uint8_t *frame, int flen, int link_len, const vx_vnet_hdr *vh, vx_frame *f)
    enum:
        VX_TUNNEL_HDR_LEN
    int vx_tunnel_header(uint8_t *out, const uint8_t *pkt, int len, const vx_vnet_hdr *vh, const uint8_t *tap_mac,
                         const uint8_t *src_mac, uint32_t src, uint16_t sport, const sockaddr_in *dst,
                         uint16_t ip_id, int *hdr_len)

cdef extern from "vxengine.h" nogil:
    enum:
        VX_HEADROOM
        VX_VNET_HDR_LEN
        VX_N_REASONS
        VX_MAX_PACKET
        VX_MAX_SEGS
        VX_SCATTER_MAX_IOV
        VX_TX_SOCKS_MAX
    ctypedef struct vx_core:
        uint8_t strict_source
        uint32_t peer_count
        uint32_t peer6_count
        uint64_t drops[32]
        uint64_t tx_packets, tx_bytes, rx_packets, rx_bytes
        uint64_t tun_reads, tso_packets, tso_in_place, udp_sends, gso_sends
        uint64_t udp_recvs, gro_trains, tun_writes, coalesced, super_writes, tunnel_sends
        uint64_t tun_received, udp_received
    ctypedef struct vx_gro:
        int active
        int udp
    ctypedef struct vx_cap_hdr:
        uint64_t ts_ns
        uint32_t saddr, daddr
        uint16_t sport, dport
        uint8_t iface, dir, reason, v6
        uint32_t orig_len, cap_len
        uint8_t saddr6[16]
        uint8_t daddr6[16]
    ctypedef struct vx_cap_ring:
        uint64_t lost
    ctypedef struct vx_io:
        vx_core *core
        int tun_fd, udp_fd, stop_fd, pkt_fd, udp6_fd, pkt6_fd
        uint8_t local_ip6[16]
        int n_tx_socks
        int tx_socks[32]
        uint16_t tx_ports[32]
        int n_tx_socks6
        int tx_socks6[32]
        uint16_t tx_ports6[32]
        int vnet, udp_gso, udp_gro, tun_uso
        int gso_disabled
        int capture
        int sched_auto
        uint64_t sched_switches
        vx_cap_ring *cap_tx
        vx_cap_ring *cap_rx
        int tap_fd
        uint8_t tap_mac[6]
        int tap_csum
        int tunnel_errno
        uint16_t tunnel_ip_id
        uint32_t local_ip
        uint16_t local_port
    int vx_cap_init(vx_cap_ring *r, uint32_t snaplen)
    void vx_cap_free(vx_cap_ring *r)
    uint64_t vx_cap_available(vx_cap_ring *r)
    const vx_cap_hdr *vx_cap_peek(vx_cap_ring *r, uint64_t i)
    void vx_cap_release(vx_cap_ring *r, uint64_t n)
    ctypedef void (*vx_emit_fn)(void *ctx, const iovec *iov, int iovcnt, int has_vnet, int count, uint64_t bytes)
    int vx_core_init(vx_core *c, uint32_t vni, const uint8_t *mac, int subnet_len, int tun_mtu, uint16_t port)
    void vx_core_free(vx_core *c)
    int vx_set_peer(vx_core *c, uint32_t subnet, const uint8_t *mac, uint32_t ip)
    int vx_remove_peer(vx_core *c, uint32_t subnet)
    int vx_core_enable_v6(vx_core *c, const uint8_t *mac6, int subnet_len6)
    int vx_set_peer6(vx_core *c, const uint8_t *subnet, const uint8_t *mac, const uint8_t *ip)
    int vx_remove_peer6(vx_core *c, const uint8_t *subnet)
    int vx_encap(vx_core *c, uint8_t *buf, int len, sockaddr_in *dest)
    int vx_encap6(vx_core *c, uint8_t *buf, int len, sockaddr_in6 *dest)
    int vx_check(vx_core *c, const uint8_t *p, int n, uint32_t sender, int *inner_len)
    int vx_check6(vx_core *c, const uint8_t *p, int n, const uint8_t *sender6, int seg_len, int *inner_len)
    int vx_ecn_verdict(const uint8_t *ip, int len, uint8_t outer_tos)
    void vx_ecn_mark(uint8_t *ip, int len, uint8_t outer_tos)
    uint8_t vx_ecn_outer(const uint8_t *ip)
    uint64_t vx_csum_add(const uint8_t *p, size_t n, uint64_t acc)
    uint64_t vx_csum_add_portable(const uint8_t *p, size_t n, uint64_t acc)
    uint16_t vx_csum_fold(uint64_t acc)
    int vx_gso_headers(const uint8_t *pkt, int len, int gso_size, uint8_t *hdrs, size_t hdrs_cap, int *lens,
                       int max_segs, int *hdr_stride, int *hdr_len)
    int vx_scatter_iov(uint8_t *buf, size_t cap, int lead, int hlen, int mss, iovec *iov, int max_iov)
    void vx_scatter_compact(uint8_t *buf, int hlen, int mss, int len)
    int vx_split_read(uint8_t *buf, int len, int gso_size, int hlen, int mss, uint8_t *hdrs, size_t hdrs_cap,
                      int *lens, int *stride, int *hdr, int *inplace)
    void vx_gro_push(vx_gro *g, const uint8_t *p, int len, vx_emit_fn emit, void *ctx)
    void vx_gro_flush(vx_gro *g, vx_emit_fn emit, void *ctx)
    int vx_run_tx(vx_io *io)
    int vx_run_rx(vx_io *io)
    int vx_bridge(vx_io *io, int stop_fd, int go_fd, int done_fd, int nice, const int *extra, int n_extra)
    void vx_lock(vx_core *c)
    void vx_unlock(vx_core *c)

assert wire.N_REASONS <= VX_N_REASONS
assert int(DropReason.TUN_WRITE_FAILED) == 14


cdef uint32_t _ip_net(str ip) except? 0:
    """Dotted quad -> network-order uint32 as it sits in memory (s_addr); 0 if invalid."""
    cdef bytes raw
    cdef uint32_t out = 0
    try:
        raw = socket.inet_aton(ip)
    except OSError:
        return 0
    if len(raw) != 4 or ip.count(".") != 3:
        return 0
    memcpy(&out, PyBytes_AS_STRING(raw), 4)
    return out


cdef bytes _ip6_bytes(str ip):
    """IPv6 text -> 16 bytes; an address that does not parse gives ::, which no peer has."""
    try:
        return socket.inet_pton(socket.AF_INET6, ip)
    except OSError:
        return bytes(16)


cdef class Codec:
    """The compiled vxlan.wire.Codec (the interface: vxlan.codec.BatchCodec)."""
    cdef vx_core core
    cdef int _ready
    cdef int _n_reasons
    cdef uint32_t _mask
    cdef object _mask6  # the IPv6 subnet mask (an int), None without an IPv6 VTEP
    cdef public list pending_tun  # always empty: the C paths answer nothing into the TUN
    headroom = wire.HEADROOM

    def __cinit__(self, int vni, vtep_mac, int subnet_len, int tun_mtu, int port, strict_source=False,
                  vtep_mac6=None, int subnet_len6=0):
        self._ready = 0
        self.pending_tun = []
        wire.vxlan_header(vni)  # range check with the reference's error
        mac = bytes(vtep_mac)
        if len(mac) != 6:
            raise ValueError("vtep_mac is 6 bytes")
        if not 0 < subnet_len <= 32:
            raise ValueError(f"subnet_len {subnet_len} is out of range 1..32")
        if vx_core_init(&self.core, vni, <const uint8_t*>PyBytes_AS_STRING(mac), subnet_len, tun_mtu, port):
            raise MemoryError()
        self.core.strict_source = 1 if strict_source else 0
        self._ready = 1
        if vtep_mac6 is not None:
            mac6 = bytes(vtep_mac6)
            if len(mac6) != 6:
                raise ValueError("vtep_mac is 6 bytes")
            if not 0 < subnet_len6 <= 128:
                raise ValueError(f"subnet_len6 {subnet_len6} is out of range 1..128")
            if vx_core_enable_v6(&self.core, <const uint8_t*>PyBytes_AS_STRING(mac6), subnet_len6):
                raise MemoryError()
            self._mask6 = int(ipaddress.IPv6Network(f"::/{subnet_len6}").netmask)  # Python ints, not C shifts
        self._n_reasons = wire.N_REASONS
        self._mask = <uint32_t>((0xFFFFFFFF << (32 - subnet_len)) & 0xFFFFFFFF)

    def __dealloc__(self):
        if self._ready:
            vx_core_free(&self.core)

    # -- control plane ------------------------------------------------------------------
    def set_peer(self, subnet, vtep_mac, str public_ip):
        cdef uint32_t sn = int(subnet)
        if sn & ~self._mask:
            raise ValueError(f"{ipaddress.IPv4Address(sn)} is not a subnet address for this SubnetLen")
        wire.check_vtep_address(public_ip)
        mac = bytes(vtep_mac)
        if len(mac) != 6:
            raise ValueError("MAC addresses are 6 bytes")
        if vx_set_peer(&self.core, sn, <const uint8_t*>PyBytes_AS_STRING(mac), _ip_net(public_ip)):
            raise MemoryError()

    def remove_peer(self, subnet):
        vx_remove_peer(&self.core, <uint32_t>int(subnet))

    def set_peer6(self, subnet6, vtep_mac, str public_ipv6):
        if self._mask6 is None:
            raise ValueError("this node has no IPv6 VTEP (vtep_mac6)")
        sn = int(subnet6)
        if sn & ~self._mask6:
            raise ValueError(f"{ipaddress.IPv6Address(sn)} is not a subnet address for this IPv6SubnetLen")
        ip = socket.inet_pton(socket.AF_INET6, wire.check_vtep_address6(public_ipv6))
        mac = bytes(vtep_mac)
        if len(mac) != 6:
            raise ValueError("MAC addresses are 6 bytes")
        key = sn.to_bytes(16, "big")
        if vx_set_peer6(&self.core, <const uint8_t*>PyBytes_AS_STRING(key), <const uint8_t*>PyBytes_AS_STRING(mac),
                        <const uint8_t*>PyBytes_AS_STRING(ip)):
            raise MemoryError()

    def remove_peer6(self, subnet6):
        key = int(subnet6).to_bytes(16, "big")
        vx_remove_peer6(&self.core, <const uint8_t*>PyBytes_AS_STRING(key))

    def peer_count(self):
        return self.core.peer_count

    def drop_counts(self):
        return [self.core.drops[i] for i in range(self._n_reasons)]

    def count_drop(self, int reason, int n=1):
        if not 0 <= reason < self._n_reasons:
            raise ValueError(f"no drop reason {reason}")
        self.core.drops[reason] += n

    def stats(self):
        """Packet, byte and offload counters (the drop counters are drop_counts())."""
        c = &self.core
        return {"tx_packets": c.tx_packets, "tx_bytes": c.tx_bytes, "rx_packets": c.rx_packets,
                "rx_bytes": c.rx_bytes, "tun_reads": c.tun_reads, "tso_packets": c.tso_packets,
                "tso_in_place": c.tso_in_place,
                "udp_sends": c.udp_sends, "gso_sends": c.gso_sends, "udp_recvs": c.udp_recvs,
                "gro_trains": c.gro_trains, "tun_writes": c.tun_writes, "coalesced": c.coalesced,
                "super_writes": c.super_writes, "tunnel_sends": c.tunnel_sends,
                "tun_received": c.tun_received, "udp_received": c.udp_received}

    # -- data plane (the batch API of vxlan.wire.Codec) ------------------------------------
    def encap_batch(self, list bufs, lengths, int count, list verdicts, list dests):
        cdef int i, n, v, ok = 0
        cdef bytearray buf
        cdef sockaddr_in dst
        cdef sockaddr_in6 dst6
        cdef uint8_t *p
        cdef int v6
        for i in range(count):
            buf = bufs[i]
            n = lengths[i]
            if n < 0 or VX_HEADROOM + n > PyByteArray_GET_SIZE(buf):
                raise ValueError(f"length {n} of packet {i} does not fit its buffer")
            p = <uint8_t*>PyByteArray_AS_STRING(buf)
            v6 = n >= 1 and (p[VX_HEADROOM] >> 4) == 6
            vx_lock(&self.core)
            v = vx_encap6(&self.core, p, n, &dst6) if v6 else vx_encap(&self.core, p, n, &dst)
            vx_unlock(&self.core)
            verdicts[i] = v
            if v:
                self.core.drops[v] += 1
            else:
                if v6:
                    dests[i] = (socket.inet_ntop(socket.AF_INET6, (<char*>&dst6.sin6_addr)[:16]),
                                ntohs(dst6.sin6_port))
                else:
                    dests[i] = (socket.inet_ntoa((<char*>&dst.sin_addr.s_addr)[:4]), ntohs(dst.sin_port))
                ok += 1
        return ok

    def decap_batch(self, list bufs, lengths, senders, int count, list verdicts, list inner_lengths, tos=None):
        cdef int i, n, v, inner, ok = 0
        cdef uint8_t outer_tos = 0
        cdef bytearray buf
        for i in range(count):
            buf = bufs[i]
            n = lengths[i]
            if n < 0 or n > PyByteArray_GET_SIZE(buf):
                raise ValueError(f"length {n} of datagram {i} does not fit its buffer")
            inner = 0
            sender = senders[i]
            if ":" in sender:  # over the IPv6 underlay
                sender6 = _ip6_bytes(sender)
                vx_lock(&self.core)
                v = vx_check6(&self.core, <uint8_t*>PyByteArray_AS_STRING(buf), n,
                              <const uint8_t*>PyBytes_AS_STRING(sender6), 0, &inner)
                vx_unlock(&self.core)
            else:
                vx_lock(&self.core)
                v = vx_check(&self.core, <uint8_t*>PyByteArray_AS_STRING(buf), n, _ip_net(sender), &inner)
                vx_unlock(&self.core)
            if tos is not None:
                outer_tos = tos[i]
            if not v:
                v = vx_ecn_verdict(<uint8_t*>PyByteArray_AS_STRING(buf) + VX_HEADROOM, inner, outer_tos)
            if not v:
                vx_ecn_mark(<uint8_t*>PyByteArray_AS_STRING(buf) + VX_HEADROOM, inner, outer_tos)
            verdicts[i] = v
            inner_lengths[i] = inner
            if v:
                self.core.drops[v] += 1
            else:
                ok += 1
        return ok


cdef class Engine(Codec):
    """The Codec plus the I/O loops. ``attach`` the fds, then run ``run_tx`` and ``run_rx``
    in two threads; both return once ``stop_fd`` becomes readable. Capture: ``capture_on``
    makes both loops copy what they see into rings that ``capture_drain`` empties."""
    cdef vx_io io
    cdef vx_cap_ring rings[2]
    cdef int rings_ready

    def __cinit__(self, *args, **kwargs):
        self.io.tun_fd = self.io.udp_fd = self.io.stop_fd = self.io.pkt_fd = self.io.tap_fd = -1  # nothing attached
        self.io.udp6_fd = self.io.pkt6_fd = -1

    def __dealloc__(self):
        if self.rings_ready:
            vx_cap_free(&self.rings[0])
            vx_cap_free(&self.rings[1])

    def attach(self, int tun_fd, int udp_fd, int stop_fd, bint vnet, bint udp_gso, bint udp_gro,
               bint tun_uso=False, str local_ip="0.0.0.0", int local_port=0, int pkt_fd=-1, tx_socks=(),
               int tap_fd=-1, bytes tap_mac=b"\0" * 6, bint sched_auto=False, int udp6_fd=-1, int pkt6_fd=-1,
               str local_ip6="::", bint tap_csum=False, tx_socks6=()):
        self.io.core = &self.core
        self.io.tun_fd = tun_fd
        self.io.udp_fd = udp_fd
        self.io.udp6_fd = udp6_fd  # >= 0: a dual-stack node's IPv6 underlay socket (both loops use it)
        self.io.pkt6_fd = pkt6_fd  # >= 0: its frames from a packet socket instead (the RX loop)
        ip6 = _ip6_bytes(local_ip6)
        memcpy(self.io.local_ip6, <const char*>ip6, 16)
        self.io.pkt_fd = pkt_fd  # >= 0: receive frames with their checksum state (vx_rx_packet.c)
        self.io.tap_fd = tap_fd  # >= 0: send super-packets whole as UDP tunnel GSO frames (vx_tunnel.c)
        if len(tap_mac) != 6:
            raise ValueError("tap_mac: 6 bytes")
        memcpy(self.io.tap_mac, <const char*>tap_mac, 6)
        self.io.tap_csum = tap_csum  # the TAP finishes outer UDP checksums: IPv6 tunnel frames too
        self.io.tunnel_errno = 0
        self.io.sched_auto = sched_auto  # each loop switches its thread between SCHED_OTHER and SCHED_BATCH
        # (fd, port) of each source-port socket: a flow's datagrams leave by one of them (vx_tx.c);
        # tx_socks6: the IPv6 underlay's
        if len(tx_socks) > VX_TX_SOCKS_MAX or len(tx_socks6) > VX_TX_SOCKS_MAX:
            raise ValueError(f"at most {VX_TX_SOCKS_MAX} source-port sockets")
        self.io.n_tx_socks = len(tx_socks)
        for i, (fd, port) in enumerate(tx_socks):
            self.io.tx_socks[i] = fd
            self.io.tx_ports[i] = port
        self.io.n_tx_socks6 = len(tx_socks6)
        for i, (fd, port) in enumerate(tx_socks6):
            self.io.tx_socks6[i] = fd
            self.io.tx_ports6[i] = port
        self.io.stop_fd = stop_fd
        self.io.vnet = vnet
        self.io.udp_gso = udp_gso
        self.io.udp_gro = udp_gro
        self.io.tun_uso = tun_uso
        self.io.gso_disabled = 0
        self.io.capture = 0
        self.io.local_ip = _ip_net(local_ip)
        self.io.local_port = local_port

    def run_tx(self):
        cdef int rc
        with nogil:
            rc = vx_run_tx(&self.io)
        if rc < 0:
            raise MemoryError("vxland tx loop could not allocate its buffers")
        if rc > 0:
            raise OSError(rc, f"reading the TUN failed: {os.strerror(rc)}")

    def run_rx(self):
        cdef int rc
        with nogil:
            rc = vx_run_rx(&self.io)
        if rc:
            raise MemoryError("vxland rx loop could not allocate its buffers")

    def bridge(self, int stop_fd, int go_fd, int done_fd, int nice=0, keep=()):
        """Fork a reload's bridge (vx_bridge.c): a child that, once ``go_fd`` is written (after
        this engine's loops stopped), forwards with its descriptors and tables at ``nice`` until
        ``stop_fd`` is written, then writes ``done_fd`` (eventfds all); ``keep``: more
        descriptors it holds open (at most 8). Call it on the thread that re-executes.
        Returns its PID."""
        cdef int extra[8]
        cdef int n = 0
        for fd in keep[:8]:
            extra[n] = fd
            n += 1
        cdef int pid = vx_bridge(&self.io, stop_fd, go_fd, done_fd, nice, extra, n)
        cdef int err = errno
        if pid < 0:
            raise OSError(err, f"no bridge for the reload: {os.strerror(err)}")
        return pid

    @property
    def gso_disabled(self):
        return bool(self.io.gso_disabled)

    def stats(self):
        """Codec.stats and the scheduling-policy changes the loops made (--engine-sched auto)."""
        values = Codec.stats(self)
        values["sched_switches"] = self.io.sched_switches
        return values

    @property
    def tunnel_errno(self):
        """0, or the errno with which the TAP refused a tunnel GSO frame (super-packets are split since)."""
        return self.io.tunnel_errno

    # -- capture ---------------------------------------------------------------------------
    def capture_on(self, int snaplen):
        """Start copying packets into the rings (allocated once, with the first snap length)."""
        if not self.rings_ready:
            if vx_cap_init(&self.rings[0], snaplen) or vx_cap_init(&self.rings[1], snaplen):
                vx_cap_free(&self.rings[0])
                vx_cap_free(&self.rings[1])
                raise MemoryError("no memory for the capture rings")
            self.rings_ready = 1
            self.io.cap_tx = &self.rings[0]
            self.io.cap_rx = &self.rings[1]
        self.io.capture = 1

    def capture_off(self):
        self.io.capture = 0

    @property
    def capturing(self):
        return bool(self.io.capture)

    @property
    def capture_lost(self):
        """Records the rings had no room for (packets were forwarded all the same)."""
        if not self.rings_ready:
            return 0
        return self.rings[0].lost + self.rings[1].lost

    def capture_drain(self, int limit=100000):
        """Records from both rings: (ts_ns, iface, direction, reason, saddr, sport, daddr, dport,
        orig_len, data) with addresses as text (dotted quads; IPv6 for the IPv6 underlay's
        records); iface 0 underlay, 1 overlay; direction 1 in, 2 out."""
        cdef list out = []
        cdef uint64_t n, i
        cdef const vx_cap_hdr *h
        cdef int r
        if not self.rings_ready:
            return out
        for r in range(2):
            n = vx_cap_available(&self.rings[r])
            if n > <uint64_t>limit:
                n = limit
            for i in range(n):
                h = vx_cap_peek(&self.rings[r], i)
                if h.v6:
                    saddr = socket.inet_ntop(socket.AF_INET6, (<char*>h.saddr6)[:16])
                    daddr = socket.inet_ntop(socket.AF_INET6, (<char*>h.daddr6)[:16])
                else:
                    saddr = socket.inet_ntoa((<char*>&h.saddr)[:4])
                    daddr = socket.inet_ntoa((<char*>&h.daddr)[:4])
                out.append((h.ts_ns, h.iface, h.dir, h.reason, saddr, h.sport, daddr, h.dport, h.orig_len,
                            PyBytes_FromStringAndSize(<const char*>h + sizeof(vx_cap_hdr), h.cap_len)))
            vx_cap_release(&self.rings[r], n)
        out.sort(key=lambda rec: rec[0])
        return out


# -- the offload code, exposed for the tests ------------------------------------------------

def frame_outer(bytes frame, int flags=0, int gso_type=0, int link_len=14):
    """vx_rx_packet.c's outer checks on an Ethernet frame as a packet socket reads it (the
    virtio-net header's flags and gso type given apart): (verdict, outer source, VXLAN offset,
    VXLAN length). For tests."""
    cdef vx_vnet_hdr vh
    cdef vx_frame f
    vh.flags = flags
    vh.gso_type = gso_type
    vh.hdr_len = vh.gso_size = vh.csum_start = vh.csum_offset = 0
    f.saddr = 0
    f.v6 = 0
    f.vx_off = f.vx_len = 0
    v = vx_frame_outer(<const uint8_t*>PyBytes_AS_STRING(frame), len(frame), link_len, &vh, &f)
    if f.v6:
        return v, socket.inet_ntop(socket.AF_INET6, (<char*>f.saddr6)[:16]), f.vx_off, f.vx_len
    return v, socket.inet_ntoa((<char*>&f.saddr)[:4]), f.vx_off, f.vx_len


def tunnel_header(bytes pkt, int gso_type, int gso_size, int csum_start, int csum_offset, bytes tap_mac,
                  bytes src_mac, str src, int sport, str dst, int dport, int ip_id=0, int flags=1):
    """vx_tunnel.c's header of a UDP tunnel GSO frame for the inner super-packet ``pkt``: the
    header's bytes (virtio-net header, outer Ethernet, IPv4, UDP) and the segment count, or
    (None, -1) if it cannot go as one frame. For tests."""
    cdef vx_vnet_hdr vh
    cdef sockaddr_in d
    cdef uint8_t out[VX_TUNNEL_HDR_LEN]
    cdef int hdr = 0
    if len(tap_mac) != 6 or len(src_mac) != 6:
        raise ValueError("MAC addresses are 6 bytes")
    vh.flags = flags
    vh.gso_type = gso_type
    vh.hdr_len = 0
    vh.gso_size = gso_size
    vh.csum_start = csum_start
    vh.csum_offset = csum_offset
    d.sin_addr.s_addr = _ip_net(dst)
    d.sin_port = htons(dport)
    n = vx_tunnel_header(out, <const uint8_t*>PyBytes_AS_STRING(pkt), len(pkt), &vh,
                         <const uint8_t*>PyBytes_AS_STRING(tap_mac), <const uint8_t*>PyBytes_AS_STRING(src_mac),
                         _ip_net(src), sport, &d, ip_id, &hdr)
    if n < 1:
        return None, -1
    return (<char*>out)[:VX_TUNNEL_HDR_LEN], n


def checksum(data, bint portable=False) -> int:
    """Folded (not inverted) Internet checksum of ``data`` as a big-endian 16-bit value.

    ``portable`` forces the plain C loop instead of the CPU-specific one, so that the tests
    check both."""
    cdef bytes b = bytes(data)
    cdef const uint8_t *p = <const uint8_t*>PyBytes_AS_STRING(b)
    cdef uint16_t s = vx_csum_fold(vx_csum_add_portable(p, len(b), 0) if portable else vx_csum_add(p, len(b), 0))
    cdef uint8_t out[2]
    memcpy(out, &s, 2)
    return (out[0] << 8) | out[1]


def gso_split(packet, int gso_size):
    """Split an IPv4 TCP or UDP super-packet as the TX loop does (headers from vx_gso_headers,
    the payload pieces after them); list of segments (bytes), or ValueError."""
    cdef bytes pkt = bytes(packet)
    cdef size_t cap = <size_t>VX_MAX_SEGS * 256
    cdef uint8_t *hdrs = <uint8_t*>malloc(cap)
    cdef int lens[VX_MAX_SEGS]
    cdef int stride = 0, hlen = 0, n, k
    if hdrs == NULL:
        raise MemoryError()
    try:
        n = vx_gso_headers(<const uint8_t*>PyBytes_AS_STRING(pkt), len(pkt), gso_size, hdrs, cap, lens,
                           VX_MAX_SEGS, &stride, &hlen)
        if n < 0:
            raise ValueError("not a splittable IPv4 or IPv6 TCP or UDP packet")
        return [PyBytes_FromStringAndSize(<char*>hdrs + <size_t>k * stride + VX_HEADROOM, hlen)
                + pkt[hlen + k * gso_size: hlen + k * gso_size + lens[k] - hlen]
                for k in range(n)]
    finally:
        free(hdrs)


cdef size_t _READ_BUF = VX_VNET_HDR_LEN + 2 * (VX_HEADROOM + 65535) + 64   # vx_run_tx's slot


cdef int _read_into(uint8_t *buf, bytes data, int hlen, int mss, int *niov) except -1:
    """What the TX loop's read does: the vnet header and ``data`` into buf's plain or scattered layout."""
    cdef iovec iov[VX_SCATTER_MAX_IOV]
    cdef bytes stream = bytes(VX_VNET_HDR_LEN) + data
    cdef const uint8_t *src = <const uint8_t*>PyBytes_AS_STRING(stream)
    cdef size_t left = len(stream), n
    cdef int i = 0
    niov[0] = vx_scatter_iov(buf, _READ_BUF - VX_VNET_HDR_LEN, VX_VNET_HDR_LEN, hlen, mss, iov, VX_SCATTER_MAX_IOV) if mss else 0
    if niov[0] < 0:
        raise ValueError("no scattered layout for this shape")
    if niov[0] == 0:
        memcpy(buf + VX_HEADROOM - VX_VNET_HDR_LEN, src, left)
        return 0
    while left:
        n = iov[i].iov_len if iov[i].iov_len < left else left
        memcpy(iov[i].iov_base, src, n)
        src += n
        left -= n
        i += 1
    return 0


def scatter_roundtrip(packet, int hlen, int mss):
    """Read ``packet`` scattered for (hlen, mss), then compact it: the bytes the TX loop works on."""
    cdef bytes pkt = bytes(packet)
    cdef uint8_t *buf = <uint8_t*>malloc(_READ_BUF)
    cdef int niov
    if buf == NULL:
        raise MemoryError()
    try:
        _read_into(buf + VX_VNET_HDR_LEN, pkt, hlen, mss, &niov)
        if len(pkt) > hlen + mss:
            vx_scatter_compact(buf + VX_VNET_HDR_LEN, hlen, mss, len(pkt))
        return PyBytes_FromStringAndSize(<char*>buf + VX_VNET_HDR_LEN + VX_HEADROOM, len(pkt))
    finally:
        free(buf)


def gso_split_read(packet, int gso_size, int hlen, int mss):
    """Split ``packet`` as the TX loop does after a read laid out for (hlen, mss) (0, 0: a plain
    read): (segments, split in place)."""
    cdef bytes pkt = bytes(packet)
    cdef uint8_t *slot = <uint8_t*>malloc(_READ_BUF)
    cdef size_t cap = <size_t>VX_MAX_SEGS * 256
    cdef uint8_t *hdrs = <uint8_t*>malloc(cap)
    cdef int lens[VX_MAX_SEGS]
    cdef int stride = 0, hdr = 0, inplace = 0, n, k, niov
    cdef uint8_t *buf
    cdef uint8_t *h
    if slot == NULL or hdrs == NULL:
        free(slot)
        free(hdrs)
        raise MemoryError()
    buf = slot + VX_VNET_HDR_LEN
    try:
        _read_into(buf, pkt, hlen, mss, &niov)
        n = vx_split_read(buf, len(pkt), gso_size, hlen, mss, hdrs, cap, lens, &stride, &hdr, &inplace)
        if n < 0:
            raise ValueError("not a splittable IPv4 or IPv6 TCP or UDP packet")
        out = []
        for k in range(n):
            if inplace:
                h = buf + <size_t>k * stride + VX_HEADROOM
                out.append(PyBytes_FromStringAndSize(<char*>h, lens[k]))
            else:
                h = hdrs + <size_t>k * stride + VX_HEADROOM
                out.append(PyBytes_FromStringAndSize(<char*>h, hdr) + PyBytes_FromStringAndSize(
                    <char*>buf + VX_HEADROOM + hdr + <size_t>k * gso_size, lens[k] - hdr))
        return out, bool(inplace)
    finally:
        free(slot)
        free(hdrs)


cdef void _collect(void *ctx, const iovec *iov, int iovcnt, int has_vnet, int count, uint64_t nbytes) noexcept:
    out = <list>ctx
    raw = b"".join([PyBytes_FromStringAndSize(<const char*>iov[i].iov_base, iov[i].iov_len) for i in range(iovcnt)])
    if has_vnet:
        out.append((raw[:VX_VNET_HDR_LEN], raw[VX_VNET_HDR_LEN:], count))
    else:
        out.append((bytes(VX_VNET_HDR_LEN), raw, count))


def gro_coalesce(packets, bint udp=False):
    """Feed inner packets through the RX loop's GRO, in order; returns what would be written
    to the TUN: a list of (virtio_net_hdr bytes, packet bytes, segments in it). ``udp``: UDP
    trains too, as with a TUN that takes USO writes."""
    cdef vx_gro *g = <vx_gro*>calloc(1, sizeof(vx_gro))
    cdef bytes p
    keep = [bytes(packet) for packet in packets]  # GRO points into them until the flush
    result = []
    if g == NULL:
        raise MemoryError()
    g.udp = udp
    try:
        for p in keep:
            vx_gro_push(g, <const uint8_t*>PyBytes_AS_STRING(p), len(p), <vx_emit_fn>_collect, <void*>result)
        vx_gro_flush(g, <vx_emit_fn>_collect, <void*>result)
    finally:
        free(g)
    return result


def ecn_outer(bytes pkt):
    """vx_ecn_outer: the outer ECN field the engine gives an inner packet. For tests."""
    if len(pkt) < 2:
        raise ValueError("an IP header, please")
    return vx_ecn_outer(<const uint8_t*>PyBytes_AS_STRING(pkt))
