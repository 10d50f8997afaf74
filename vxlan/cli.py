"""Command lines: ``vxland`` (the daemon, flanneld's flag names) and ``vxlanctl`` (tools).

The only module that parses arguments. Like flanneld (coreos/pkg flagutil.SetFlagsFromEnv),
every vxland flag can also come from ``FLANNELD_<FLAG>`` in the environment, upper case with
``-`` as ``_``; a flag on the command line wins.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path

import vxlan

DEFAULT_ENDPOINTS = "http://127.0.0.1:4001,http://127.0.0.1:2379"


def _env(flag: str, default: str | None = None) -> str | None:
    return os.environ.get("FLANNELD_" + flag.upper().replace("-", "_"), default)


def _env_bool(flag: str) -> bool:
    return (_env(flag, "") or "").lower() not in ("", "0", "false")


def _ipv4(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 address") from None


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is out of range 0..65535")
    return value


def _minutes(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes") from None


def _size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B")
    unit = t[-1:] if t[-1:] in ("K", "M", "G") else ""
    try:
        value = int(t[: len(t) - len(unit)]) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 100M") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def _cidr(text: str):
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a CIDR like 10.0.0.0/8") from None


def vxland_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vxland",
        description="Userspace VXLAN data plane for flannel overlays (no kernel vxlan module needed). "
                    "Joins the flannel network in etcd, or a static registry file.",
        epilog="Every flag can also be set as FLANNELD_<FLAG> in the environment (flag wins).",
    )
    flannel = p.add_argument_group("flanneld flags")
    flannel.add_argument("--etcd-endpoints", default=_env("etcd-endpoints", DEFAULT_ENDPOINTS),
                         help=f"comma-separated etcd endpoints (default {DEFAULT_ENDPOINTS})")
    flannel.add_argument("--etcd-prefix", default=_env("etcd-prefix", "/coreos.com/network"),
                         help="etcd prefix of the network config and leases (default /coreos.com/network)")
    flannel.add_argument("--etcd-keyfile", default=_env("etcd-keyfile"), help="TLS key for etcd")
    flannel.add_argument("--etcd-certfile", default=_env("etcd-certfile"), help="TLS certificate for etcd")
    flannel.add_argument("--etcd-cafile", default=_env("etcd-cafile"), help="CA to verify etcd's certificate")
    flannel.add_argument("--etcd-username", default=_env("etcd-username"), help="etcd user")
    flannel.add_argument("--etcd-password", default=_env("etcd-password"), help="etcd password")
    flannel.add_argument("--subnet-file", type=Path, default=Path(_env("subnet-file", "/run/flannel/subnet.env")),
                         help="where to write the subnet.env (default /run/flannel/subnet.env)")
    flannel.add_argument("--subnet-lease-renew-margin", type=_minutes,
                         default=_env("subnet-lease-renew-margin", "60"),
                         help="renew the lease this many minutes before it expires (1..1439, default 60)")
    flannel.add_argument("--iface", default=_env("iface"),
                         help="underlay interface, by name or IPv4 address (default: the interface "
                              "of the default route)")
    flannel.add_argument("--public-ip", type=_ipv4, default=_env("public-ip"),
                         help="IP other nodes reach this one at; goes into our lease (default: --iface's address)")
    flannel.add_argument("--healthz-ip", type=_ipv4, default=_env("healthz-ip", "0.0.0.0"),
                         help="address for /healthz and /metrics (default 0.0.0.0)")
    flannel.add_argument("--healthz-port", type=_port, default=_port(_env("healthz-port", "0") or "0"),
                         help="port for /healthz and /metrics; 0 disables them (default 0)")
    flannel.add_argument("-v", "--v", dest="verbosity", type=int, nargs="?", const=1,
                         default=int(_env("v", "0") or 0), help="log verbosity; 1 or more logs debug lines")
    extra = p.add_argument_group("vxland flags")
    extra.add_argument("--registry-file", type=Path, default=_env("registry-file"),
                       help="static mode: read the config and leases from this JSON file instead of etcd; "
                            "re-read when it changes")
    extra.add_argument("--tun-name", default=_env("tun-name"),
                       help="TUN device name (default flannel.<VNI>)")
    extra.add_argument("--no-offload", action="store_true", default=_env_bool("no-offload"),
                       help="turn off TUN TSO/GRO and UDP GSO/GRO (one packet per system call)")
    cap = p.add_argument_group("capture (debugging)")
    cap.add_argument("--capture", type=Path, default=_env("capture"),
                     help="write a pcapng of the underlay and the overlay to this file (mode 0600); "
                          "SIGUSR1 stops it and, sent again, starts PATH.c1, PATH.c2 ...")
    cap.add_argument("--capture-filter", default=_env("capture-filter"),
                     help="keep only matching packets: peer=IP net=CIDR host=IP proto=tcp|udp|icmp|N (all must match)")
    cap.add_argument("--capture-count", type=int, default=int(_env("capture-count", "0") or 0),
                     help="stop after this many packets (0: no limit)")
    cap.add_argument("--capture-max-bytes", type=_size, default=_size(_env("capture-max-bytes", "0") or "0"),
                     help="rotate to PATH.1, PATH.2 ... past this size (e.g. 100M; 0: never)")
    cap.add_argument("--capture-snaplen", type=int, default=int(_env("capture-snaplen", "2048") or 2048),
                     help="bytes kept of each packet, 64-65535 (default 2048; the rings take 8192 x this)")
    cap.add_argument("--trace", action="store_true", default=_env_bool("trace"),
                     help="one line per packet to stderr (direction, peer, inner 5-tuple, length, drop reason)")
    cap.add_argument("--trace-rate", type=int, default=int(_env("trace-rate", "100") or 100),
                     help="at most this many --trace lines a second; the rest are counted (default 100)")
    cap.add_argument("--debug-allow", action="append", type=_cidr, default=[],
                     help="also answer /debug/* (packet capture) for clients in this CIDR; repeatable "
                          "(default: loopback only)")
    p.add_argument("--version", action="version", version=f"vxland {vxlan.__version__}")
    return p


def setup_logging(verbosity: int) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbosity > 0 else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def make_registry(args: argparse.Namespace):
    """The static file registry, or etcd as flanneld would use it; ValueError on bad flags."""
    if args.registry_file is not None:
        from vxlan.registry.file import FileRegistry

        return FileRegistry(args.registry_file)
    from vxlan import subnetenv
    from vxlan.registry.etcd import EtcdRegistry
    from vxlan.registry.etcd_client import EtcdClient, TLSFiles, parse_endpoints

    endpoints = parse_endpoints(args.etcd_endpoints)
    tls = None
    if args.etcd_keyfile and args.etcd_certfile:
        tls = TLSFiles(args.etcd_keyfile, args.etcd_certfile, args.etcd_cafile)
        for flag, path in (("--etcd-keyfile", tls.keyfile), ("--etcd-certfile", tls.certfile),
                           ("--etcd-cafile", tls.cafile)):
            if path and not os.access(path, os.R_OK):
                raise ValueError(f"{flag} {path}: not readable")
    elif args.etcd_keyfile or args.etcd_certfile:
        # flannel registry.go:newTlsConfig: TLS only with both; otherwise plain, with a warning.
        logging.getLogger("vxland").warning("--etcd-keyfile and --etcd-certfile go together; using plain HTTP")
    if (args.etcd_username is None) != (args.etcd_password is None):
        raise ValueError("--etcd-username and --etcd-password go together")
    client = EtcdClient(endpoints, tls=tls, username=args.etcd_username, password=args.etcd_password)
    return EtcdRegistry(client, prefix=args.etcd_prefix,
                        previous_subnet=subnetenv.previous_subnet(args.subnet_file),
                        renew_margin_s=args.subnet_lease_renew_margin * 60)


def vxland_main(argv: list[str] | None = None) -> int:
    args = vxland_parser().parse_args(argv)
    setup_logging(args.verbosity)
    log = logging.getLogger("vxland")
    import uvloop  # imported late: --help and flag errors should not need it

    from vxlan.daemon import Daemon, Options, StartupError

    if not 64 <= args.capture_snaplen <= 65535:
        log.error("--capture-snaplen %d: must be 64..65535", args.capture_snaplen)
        return 2
    if args.trace_rate < 1:
        log.error("--trace-rate %d: must be 1 or more", args.trace_rate)
        return 2
    if args.capture_count < 0:
        log.error("--capture-count %d: must be 0 or more", args.capture_count)
        return 2
    if args.capture_filter:
        from vxlan.capture import Filter

        try:
            Filter.parse(args.capture_filter)
        except ValueError as exc:
            log.error("--capture-filter: %s", exc)
            return 2
    if not 0 < args.subnet_lease_renew_margin < 24 * 60:
        log.error("Invalid subnet-lease-renew-margin option, out of acceptable range (1..1439 minutes)")
        return 1  # as flanneld (main.go)
    try:
        registry = make_registry(args)
    except (ValueError, OSError) as exc:
        log.error("%s", exc)
        return 2
    opts = Options(subnet_file=args.subnet_file, iface=args.iface, public_ip=args.public_ip,
                   tun_name=args.tun_name, healthz_ip=args.healthz_ip, healthz_port=args.healthz_port,
                   offload=not args.no_offload, capture=args.capture, capture_filter=args.capture_filter,
                   capture_count=args.capture_count, capture_max_bytes=args.capture_max_bytes,
                   capture_snaplen=args.capture_snaplen, debug_allow=tuple(args.debug_allow),
                   trace_rate=args.trace_rate if args.trace else 0)
    try:
        return uvloop.run(Daemon(opts, registry).run())
    except StartupError as exc:
        log.error("%s", exc)
        return 1


def vxlanctl_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vxlanctl", description="Tools around vxland.")
    sub = p.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="3-host lab (2 vxland, 1 kernel vxlan) on etcd: ping, iperf3, teardown")
    demo.add_argument("--vni", type=int, default=1)
    demo.add_argument("--port", type=_port, default=8472)
    demo.add_argument("--seconds", type=int, default=5, help="iperf3 duration per pair (default 5)")
    demo.add_argument("--static", action="store_true", help="use a static registry file instead of etcd")
    check = sub.add_parser("check", help="validate a registry file and print what it holds")
    check.add_argument("file", type=Path)
    decode = sub.add_parser("decode", help="print a capture (pcapng from vxland --capture) as a table")
    decode.add_argument("file", type=Path)
    decode.add_argument("-d", "--vxlan-port", type=int, action="append", default=[],
                        help="also decode UDP on this port as VXLAN (8472 and 4789 always are)")
    lab = sub.add_parser("lab", help="lab housekeeping")
    lab.add_argument("action", choices=["clean"],
                     help="clean: delete namespaces left by labs whose process is gone")
    return p


def vxlanctl_main(argv: list[str] | None = None) -> int:
    args = vxlanctl_parser().parse_args(argv)
    setup_logging(0)
    if args.command == "check":
        from vxlan.config import ConfigError
        from vxlan.registry.file import load_registry

        try:
            snap = load_registry(args.file)
        except ConfigError as exc:
            print(f"invalid: {exc}", file=sys.stderr)
            return 1
        cfg = snap.config
        print(f"Network {cfg.network}, SubnetLen {cfg.subnet_len}, VNI {cfg.backend.vni}, port {cfg.backend.port}")
        for lease in sorted(snap.leases.values(), key=lambda lease: lease.subnet):
            mac = ":".join(f"{b:02x}" for b in lease.vtep_mac) if lease.vtep_mac else "-"
            print(f"  {lease.key:<20} {lease.public_ip:<16} {lease.backend_type:<8} {mac}")
        return 0
    if args.command == "decode":
        from vxlan import decode

        return decode.run(args.file, args.vxlan_port)
    if args.command == "lab":
        from vxlan import lab

        for name in lab.clean_stale():
            print(f"deleted namespace {name}")
        return 0
    if args.command == "demo":
        from vxlan import demo

        return demo.run(vni=args.vni, port=args.port, seconds=args.seconds,
                        registry="file" if args.static else "etcd")
    return 2


if __name__ == "__main__":
    sys.exit(vxland_main())
