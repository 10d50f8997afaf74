"""Fuzz targets: every parser that takes outside input, as ``bytes -> None``.

Each target feeds its bytes to one parser and lets through only the clean outcomes: a result,
or the one exception type that parser promises (a ConfigError that names the field, a
ValueError, argparse's exit). Anything else (a traceback, a crash of the C engine) is a
finding. Run briefly by ``tests/unit/test_fuzz.py`` (hypothesis, in ``make test``) and at
length by ``make fuzz`` (atheris, coverage-guided, ``python -m tests.fuzz``).
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import os
import struct
from collections.abc import Callable

from vxlan import wire
from vxlan.capture import Filter
from vxlan.config import ConfigError
from vxlan.httpserve import HttpError, parse_head, parse_target
from vxlan.registry.etcd import EtcdRegistry, parse_config_value
from vxlan.registry.file import parse_registry_bytes

PREFIX = b"/coreos.com/network/subnets/"
PEER_IP = "198.18.0.2"
OWN_MAC = bytes.fromhex("0e0000000001")


def registry_file(data: bytes) -> None:
    with contextlib.suppress(ConfigError):
        parse_registry_bytes(data, "fuzz.json")


def network_config(data: bytes) -> None:
    with contextlib.suppress(ConfigError):
        parse_config_value("/coreos.com/network/config", data)


class _NoStore:
    api = "fuzz"  # EtcdRegistry._parse touches no store


_REGISTRY = EtcdRegistry(store=_NoStore())  # type: ignore[arg-type]


def lease(data: bytes) -> None:
    """A key and a value under <prefix>/subnets, as a watch or a listing hands them over:
    never an exception (bad ones are skipped and counted)."""
    key, _, value = data.partition(b"\n")
    _REGISTRY._parse(PREFIX + key, value)
    _REGISTRY._warned.clear()  # the once-per-key log and count memories would grow without bound here
    _REGISTRY._bad.clear()


def http_request(data: bytes) -> None:
    """A request head as a client of /healthz, /metrics or /debug/capture sends it."""
    with contextlib.suppress(HttpError):
        _, target, _ = parse_head(data)
        parse_target(target)


def capture_filter(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        Filter.parse(data.decode("utf-8", errors="replace"))


ENV_FLAGS = ("ENGINE_NICE", "HEALTHZ_PORT", "CAPTURE_COUNT", "CAPTURE_SNAPLEN", "TRACE_RATE", "V", "IPTABLES_RESYNC",
             "CAPTURE_MAX_BYTES", "IP_MASQ", "SUBNET_LEASE_RENEW_MARGIN", "ETCD_API", "IFACE")


def flags(data: bytes) -> None:
    """Environment (FLANNELD_*) and command line: argparse's exit (status 2) is the clean end."""
    from vxlan.cli import go_style_argv, vxland_parser

    parts = data.decode("utf-8", errors="replace").replace("\0", "").split("\n")
    env = {f"FLANNELD_{name}": value for name, value in zip(ENV_FLAGS, parts[0].split("\t"), strict=False)}
    saved = {k: os.environ.get(k) for k in env}
    try:
        os.environ.update(env)
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            parser = vxland_parser()
            try:
                parser.parse_args(go_style_argv(parser, parts[1:]))
            except SystemExit as exc:
                if exc.code not in (0, 2):
                    raise
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _codecs():
    from fastpath import _fastpath

    out = []
    for strict in (False, True):  # --strict-source off and on
        for cls in (wire.Codec, _fastpath.Codec):
            codec = cls(1, OWN_MAC, 24, 1450, 8472, strict_source=strict)
            codec.set_peer(int(ipaddress.IPv4Address("172.7.2.0")), bytes.fromhex("0e0000000002"), PEER_IP)
            out.append(codec)
    return out


_CODECS: list = []


def vxlan_datagram(data: bytes) -> None:
    """A datagram from a known VTEP: the compiled engine and the reference agree on the verdict."""
    if not _CODECS:
        _CODECS.extend(_codecs())
    verdicts = []
    for codec in _CODECS:
        buf = bytearray(data[:65535])
        out_v, out_len = [0], [0]
        codec.decap_batch([buf], [len(buf)], [PEER_IP], 1, out_v, out_len)
        verdicts.append((out_v[0], out_len[0] if out_v[0] == 0 else 0))
    for ref, compiled in (verdicts[0:2], verdicts[2:4]):
        if ref != compiled:
            raise AssertionError(f"reference {ref} != compiled {compiled}")


_DUAL: list = []
PEER_IP6 = "fd00:c612::2"


def vxlan_datagram6(data: bytes) -> None:
    """A datagram over the IPv6 underlay from a known VTEP to a dual-stack node, then the same
    bytes as a packet read from the TUN: the compiled engine and the reference agree on the
    verdict, the inner length and the destination."""
    from fastpath import _fastpath

    if not _DUAL:
        for strict in (False, True):
            for cls in (wire.Codec, _fastpath.Codec):
                codec = cls(1, OWN_MAC, 24, 1450, 8472, strict, bytes.fromhex("0e0000000601"), 64)
                codec.set_peer6(int(ipaddress.IPv6Address("fd07:0:0:2::")), bytes.fromhex("0e0000000602"), PEER_IP6)
                _DUAL.append(codec)
    results = []
    for codec in _DUAL:
        buf = bytearray(data[:65535])
        out_v, out_len = [0], [0]
        codec.decap_batch([buf], [len(buf)], [PEER_IP6], 1, out_v, out_len)
        tun = bytearray(wire.HEADROOM) + data[:1500]
        tun_v, dests = [0], [None]
        codec.encap_batch([tun], [len(tun) - wire.HEADROOM], 1, tun_v, dests)
        results.append((out_v[0], out_len[0] if out_v[0] == 0 else 0, tun_v[0], dests[0]))
    for ref, compiled in (results[0:2], results[2:4]):
        if ref != compiled:
            raise AssertionError(f"reference {ref} != compiled {compiled}")


def tso_split(data: bytes) -> None:
    """A TUN super-packet with a hostile virtio_net_hdr: gso_size (and for a scattered read the
    header length and MSS guessed) from the first bytes."""
    from fastpath import _fastpath

    if len(data) < 6:
        return
    gso_size, hlen, mss = struct.unpack_from("!HHH", data)
    packet = data[6:]
    with contextlib.suppress(ValueError):
        _fastpath.gso_split(packet, gso_size)
    with contextlib.suppress(ValueError):
        _fastpath.gso_split_read(packet, gso_size, hlen % 256, mss)


def gro_train(data: bytes) -> None:
    """A train of datagrams for GRO: each prefixed by its 2-byte length; TCP or UDP by the first byte."""
    from fastpath import _fastpath

    if not data:
        return
    udp, rest, packets = bool(data[0] & 1), data[1:], []
    while len(rest) >= 2 and len(packets) < 64:
        n = int.from_bytes(rest[:2], "big") % 2048
        packets.append(bytes(rest[2:2 + n]))
        rest = rest[2 + n:]
    with contextlib.suppress(ValueError):
        _fastpath.gro_coalesce(packets, udp)


def packet_frame(data: bytes) -> None:
    """A frame as the packet socket reads it, the virtio-net header's flags and gso type in the
    first two bytes: the outer checks end in a verdict, and a datagram they pass lies inside it."""
    from fastpath import _fastpath

    if len(data) < 2:
        return
    frame = data[2:]
    verdict, _, offset, length = _fastpath.frame_outer(frame, data[0], data[1])
    if verdict == 0 and not (0 < offset and 0 <= length and offset + length <= len(frame)):
        raise AssertionError(f"datagram at {offset}+{length} outside a frame of {len(frame)}")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "registry_file": registry_file, "network_config": network_config, "lease": lease,
    "capture_filter": capture_filter, "flags": flags, "vxlan_datagram": vxlan_datagram,
    "vxlan_datagram6": vxlan_datagram6, "tso_split": tso_split,
    "gro_train": gro_train, "http_request": http_request, "packet_frame": packet_frame,
}
