"""Packet capture: pcapng of the overlay and the underlay, with drop reasons, off the hot path.

The compiled data plane copies what it sees into two rings (one per direction thread); a
``CaptureHub`` thread drains them every 50 ms and hands the records to its sinks: a file
(``--capture``, rotation, count limit) or an HTTP stream (``/debug/capture``). The pcapng has
two interfaces, both raw IP (LINKTYPE_RAW): ``underlay`` gets each VXLAN datagram with an
outer IPv4/UDP header rebuilt from the real addresses and ports (Wireshark decodes it as VXLAN
on 4789, and on 8472 with ``-d udp.port==8472,vxlan``), ``overlay`` each inner packet as read
from or written to the TUN. Direction goes into ``epb_flags``; a dropped packet carries its
``DropReason`` as the packet comment. Timestamps are in microseconds.

Hand-written because the libraries that write pcapng (scapy) need about 2 ms a packet and a
capture of a busy tunnel writes tens of thousands a second.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import stat
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from vxlan.wire import HEADROOM, DropReason, internet_checksum

log = logging.getLogger(__name__)

LINKTYPE_RAW = 101
UNDERLAY, OVERLAY = 0, 1
INBOUND, OUTBOUND = 1, 2
DEFAULT_SNAPLEN = 2048
# (ts_ns, iface, direction, reason, saddr, sport, daddr, dport, orig_len, data)
Record = tuple[int, int, int, int, str, int, str, int, int, bytes]


def _pad4(data: bytes) -> bytes:
    return data + b"\x00" * (-len(data) % 4)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _pad4(value)


def _block(block_type: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", block_type, length) + body + struct.pack("<I", length)


def pcapng_header(snaplen: int) -> bytes:
    """Section header and the two interface descriptions (0 underlay, 1 overlay)."""
    shb = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)
                 + _option(4, b"vxland") + _option(0, b""))
    idbs = b"".join(
        _block(1, struct.pack("<HHI", LINKTYPE_RAW, 0, snaplen)
               + _option(2, name) + _option(9, b"\x06") + _option(0, b""))  # if_tsresol: microseconds
        for name in (b"underlay", b"overlay"))
    return shb + idbs


def outer_headers(saddr: str, sport: int, daddr: str, dport: int, payload_len: int) -> bytes:
    """IPv4 (or, for the IPv6 underlay's records, IPv6: hop limit 64, traffic class and flow
    label 0, as a kernel vxlan device sends) + UDP in front of a captured VXLAN payload (UDP
    checksum 0: not recomputed, the capture may be cut by the snap length)."""
    if ":" in saddr:
        ip6 = struct.pack("!IHBB16s16s", 0x60000000, (8 + payload_len) & 0xFFFF, 17, 64,
                          ipaddress.IPv6Address(saddr).packed, ipaddress.IPv6Address(daddr).packed)
        return ip6 + struct.pack("!HHHH", sport, dport, (8 + payload_len) & 0xFFFF, 0)
    total = 28 + payload_len
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total & 0xFFFF, 0, 0x4000, 64, 17, 0,
                     ipaddress.IPv4Address(saddr).packed, ipaddress.IPv4Address(daddr).packed)
    ip = ip[:10] + struct.pack("!H", internet_checksum(ip)) + ip[12:]
    return ip + struct.pack("!HHHH", sport, dport, (8 + payload_len) & 0xFFFF, 0)


def packet_block(record: Record) -> bytes:
    ts_ns, iface, direction, reason, saddr, sport, daddr, dport, orig_len, data = record
    if iface == UNDERLAY:
        head = outer_headers(saddr, sport, daddr, dport, orig_len)
        data, orig_len = head + data, orig_len + len(head)
    ts_us = ts_ns // 1000
    body = struct.pack("<IIIII", iface, ts_us >> 32, ts_us & 0xFFFFFFFF, len(data), orig_len) + _pad4(data)
    options = _option(2, struct.pack("<I", direction))  # epb_flags: 1 inbound, 2 outbound
    if reason:
        options += _option(1, f"drop: {DropReason(reason).label}".encode())
    return _block(6, body + options + _option(0, b""))


@dataclass(frozen=True)
class Filter:
    """``peer=IP``, ``net=CIDR``, ``host=IP``, ``proto=tcp|udp|icmp|N``, separated by commas or
    spaces; every term must match. ``peer`` looks at underlay records' outer addresses (overlay
    records pass it); the others at the inner packet. Addresses of either family (IPv6 ones
    match the IPv6 underlay and inner IPv6 packets; ``icmp`` is ICMPv6 for those)."""

    peer: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    net: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    proto: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> Filter:
        if not text:
            return cls()
        fields: dict = {}
        for term in text.replace(",", " ").split():
            key, sep, value = term.partition("=")
            try:
                if not sep:
                    raise ValueError("terms look like key=value")
                if key == "peer":
                    fields["peer"] = ipaddress.ip_address(value)
                elif key == "net":
                    fields["net"] = ipaddress.ip_network(value, strict=False)
                elif key == "host":
                    fields["net"] = ipaddress.ip_network(ipaddress.ip_address(value))  # its /32 or /128
                elif key == "proto":
                    named = {"icmp": 1, "tcp": 6, "udp": 17}
                    fields["proto"] = named[value] if value in named else int(value)
                else:
                    raise ValueError("known keys: peer, net, host, proto")
            except (ValueError, KeyError) as exc:
                raise ValueError(f"capture filter term {term!r}: {exc}") from None
        return cls(**fields)

    def match(self, record: Record) -> bool:
        iface, saddr, daddr, data = record[1], record[4], record[6], record[9]
        inner = data[HEADROOM:] if iface == UNDERLAY else data
        if self.peer is not None and iface == UNDERLAY and str(self.peer) not in (saddr, daddr):
            return False
        if self.net is None and self.proto is None:
            return True
        addresses = inner_addresses(inner)
        if addresses is None:
            return False
        proto, src, dst = addresses
        if self.proto is not None and proto != (58 if self.proto == 1 and src.version == 6 else self.proto):
            return False
        if self.net is not None and src not in self.net and dst not in self.net:
            return False
        return True


def inner_addresses(inner: bytes) -> tuple[int, ipaddress.IPv4Address | ipaddress.IPv6Address,
                                          ipaddress.IPv4Address | ipaddress.IPv6Address] | None:
    """(protocol or next header, source, destination) of an inner IPv4 or IPv6 packet; None
    for anything else (too short, another version)."""
    if len(inner) >= 20 and inner[0] >> 4 == 4:
        return inner[9], ipaddress.IPv4Address(inner[12:16]), ipaddress.IPv4Address(inner[16:20])
    if len(inner) >= 40 and inner[0] >> 4 == 6:
        return inner[6], ipaddress.IPv6Address(inner[8:24]), ipaddress.IPv6Address(inner[24:40])
    return None


def open_for_root(path: Path) -> int:
    """Open ``path`` for writing from scratch as root may safely do it in a directory others
    can write to (the README's /var/tmp): never through a symbolic link (O_NOFOLLOW), never
    someone else's file or one with other hard links, nothing but a regular file or a
    root-owned character device (/dev/null); truncated only after those checks, mode 0600."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, f"{path} is a symbolic link: not followed (vxland runs as root)") from None
        raise
    try:
        st = os.fstat(fd)
        why = None
        if stat.S_ISREG(st.st_mode):
            if st.st_uid != os.geteuid():
                why = f"belongs to uid {st.st_uid}"
            elif st.st_nlink > 1:
                why = "has other hard links"
        elif not (stat.S_ISCHR(st.st_mode) and st.st_uid == 0):
            why = "is not a regular file"
        if why is not None:
            raise OSError(errno.EPERM, f"{path} {why}: not overwritten (vxland runs as root)")
        if stat.S_ISREG(st.st_mode):
            os.ftruncate(fd, 0)
            os.fchmod(fd, 0o600)  # also when the file existed with other bits
    except BaseException:
        os.close(fd)
        raise
    return fd


class FileSink:
    """pcapng to ``path`` (mode 0600), rotated to ``path.1``, ``path.2``... past ``max_bytes``,
    closed after ``count`` packets. Opening fails at once (OSError) if the path is unwritable."""

    def __init__(self, path: Path, snaplen: int, capture_filter: Filter, count: int = 0, max_bytes: int = 0) -> None:
        self.base, self.snaplen, self.filter = path, snaplen, capture_filter
        self.count, self.max_bytes = count, max_bytes
        self.packets = 0
        self.done = False
        self.files: list[Path] = []
        self._fd = -1
        self._open(path)

    def _open(self, path: Path) -> None:
        self._fd = open_for_root(path)
        self.files.append(path)
        self._written = os.write(self._fd, pcapng_header(self.snaplen))

    def feed(self, records: list[Record]) -> None:
        if self._fd < 0:
            return
        chunk = bytearray()
        for record in records:
            if not self.filter.match(record):
                continue
            chunk += packet_block(record)
            self.packets += 1
            if self.count and self.packets >= self.count:
                break
        if chunk:
            os.write(self._fd, chunk)
            self._written += len(chunk)
        if self.count and self.packets >= self.count:
            self.close()
            self.done = True
            log.info("capture: %d packets written to %s, done", self.packets, self.files[-1])
        elif self.max_bytes and self._written >= self.max_bytes:
            os.close(self._fd)
            self._open(self.base.with_name(f"{self.base.name}.{len(self.files)}"))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class StreamSink:
    """pcapng blocks for an HTTP response, handed to its event loop. At most ``max_bytes`` wait
    in the queue; beyond that records are lost (counted), so a slow client never holds memory."""

    def __init__(self, loop: asyncio.AbstractEventLoop, capture_filter: Filter, max_bytes: int = 32 << 20) -> None:
        self.loop, self.filter, self.max_bytes = loop, capture_filter, max_bytes
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.pending = 0
        self.lost = 0
        self.done = False

    def feed(self, records: list[Record]) -> None:
        chosen = [r for r in records if self.filter.match(r)]
        if not chosen:
            return
        data = b"".join(packet_block(r) for r in chosen)
        if self.pending + len(data) > self.max_bytes:
            self.lost += len(chosen)
            return
        self.pending += len(data)
        self.loop.call_soon_threadsafe(self.queue.put_nowait, data)

    def taken(self, data: bytes) -> None:
        self.pending -= len(data)

    def close(self) -> None:
        self.done = True


def describe(record: Record) -> str:
    """One line for --trace: direction, interface, peer, inner 5-tuple, length, drop reason."""
    ts_ns, iface, direction, reason, saddr, sport, daddr, dport, orig_len, data = record
    arrow = "in " if direction == INBOUND else "out"
    inner = data[HEADROOM:] if iface == UNDERLAY else data
    where = "underlay" if iface == UNDERLAY else "overlay "
    peer = ""
    if iface == UNDERLAY:
        peer = f" peer {saddr if direction == INBOUND else daddr}"
    what = "non-IP"
    addresses = inner_addresses(inner)
    if addresses is not None:
        proto, src, dst = addresses
        hl = 40 if src.version == 6 else (inner[0] & 0x0F) * 4
        name = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp6"}.get(proto, f"proto {proto}")
        if proto in (6, 17) and len(inner) >= hl + 4:
            sp, dp = struct.unpack("!HH", inner[hl:hl + 4])
            what = f"{name} {src}:{sp} > {dst}:{dp}" if src.version == 4 else f"{name} [{src}]:{sp} > [{dst}]:{dp}"
        else:
            what = f"{name} {src} > {dst}"
    drop = f" DROP {DropReason(reason).label}" if reason else ""
    return f"trace {arrow} {where}{peer} {what} len {orig_len}{drop}"


class TraceSink:
    """--trace: one line per packet to a stream (stderr), at most ``per_second`` lines a second;
    what is suppressed is counted and said once a second."""

    def __init__(self, out, per_second: int = 100, capture_filter: Filter | None = None) -> None:
        self.out, self.per_second, self.filter = out, per_second, capture_filter or Filter()
        self.done = False
        self._second = 0
        self._lines = 0
        self.suppressed = 0

    def feed(self, records: list[Record]) -> None:
        lines = []
        for record in records:
            if not self.filter.match(record):
                continue
            second = record[0] // 1_000_000_000
            if second != self._second:
                if self.suppressed:
                    lines.append(f"trace: {self.suppressed} lines suppressed (limit {self.per_second}/s)")
                self._second, self._lines, self.suppressed = second, 0, 0
            if self._lines >= self.per_second:
                self.suppressed += 1
                continue
            self._lines += 1
            lines.append(describe(record))
        if lines:
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()

    def close(self) -> None:
        self.done = True


class CaptureHub:
    """Drains the engine's capture rings off the hot path and feeds the sinks. Capture is on
    in the engine exactly while at least one sink is attached."""

    def __init__(self, engine, snaplen: int = DEFAULT_SNAPLEN, interval_s: float = 0.05) -> None:
        self.engine = engine
        self.snaplen = snaplen
        self.interval_s = interval_s
        self._sinks: list = []
        self._lock = threading.RLock()
        self._stop = threading.Event()
        # set while a sink is attached (or to stop): without one the thread sleeps, instead of
        # waking 20 times a second on a host that captures nothing
        self._active = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vxland-capture", daemon=True)
        self._thread.start()

    def add(self, sink) -> None:
        with self._lock:
            self._sinks.append(sink)
            self.engine.capture_on(self.snaplen)
            self._active.set()

    def remove(self, sink) -> None:
        with self._lock:
            if sink in self._sinks:
                self._drain()  # what the sink asked for, up to now
                self._sinks.remove(sink)
            if not self._sinks:
                self.engine.capture_off()

    @property
    def lost(self) -> int:
        return self.engine.capture_lost

    def _drain(self) -> None:
        records = self.engine.capture_drain()
        if records:
            for sink in list(self._sinks):
                try:
                    sink.feed(records)
                except OSError as exc:  # disk full, file gone: stop that sink, never the daemon
                    log.error("capture sink failed, stopping it: %s", exc)
                    sink.close()
                    sink.done = True
        for sink in [s for s in self._sinks if s.done]:
            self._sinks.remove(sink)
        if not self._sinks:
            self.engine.capture_off()

    def _run(self) -> None:
        while self._active.wait() and not self._stop.wait(self.interval_s):
            with self._lock:
                if self._sinks:
                    self._drain()
                if not self._sinks:
                    self._active.clear()

    def close(self) -> None:
        self._stop.set()
        self._active.set()
        self._thread.join(1.0)
        with self._lock:
            if self._sinks:
                self._drain()
            for sink in self._sinks:
                sink.close()
            self._sinks.clear()
            self.engine.capture_off()
