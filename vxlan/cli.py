"""Command lines: ``vxland`` (the daemon, flanneld's flag names) and ``vxlanctl`` (tools).

The only module that parses arguments. Like flanneld (coreos/pkg flagutil.SetFlagsFromEnv),
every vxland flag can also come from ``FLANNELD_<FLAG>`` in the environment, upper case with
``-`` as ``_``; a flag on the command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import re
import signal
import sys
from pathlib import Path

import vxlan
from vxlan.dataplane import ENGINE_NICE

DEFAULT_ENDPOINTS = "http://127.0.0.1:4001,http://127.0.0.1:2379"


def _env(flag: str, default: str | None = None) -> str | None:
    """FLANNELD_<FLAG>. Used as the flag's default *as text*: argparse converts a text default
    with the flag's type when parsing, so a bad value is the flag's clean error (exit 2), not
    a traceback while the parser is built."""
    return os.environ.get("FLANNELD_" + flag.upper().replace("-", "_"), default)


def _env_bool(flag: str) -> bool:
    return (_env(flag, "") or "").lower() not in ("", "0", "false")


def _ipv4(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 address") from None


def _ipv6_vtep(text: str) -> str:
    from vxlan.wire import check_vtep_address6

    try:
        return check_vtep_address6(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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


def _add_choice(group, flag: str, values: tuple[str, ...], help: str) -> None:
    """A flag that takes one of ``values``, the first the default (also when FLANNELD_<FLAG> is
    set but empty)."""
    group.add_argument(flag, type=_one_of(*values), metavar="{" + ",".join(values) + "}",
                       default=_env(flag.removeprefix("--"), values[0]) or values[0], help=help)


def _one_of(*values: str):
    """A type that takes only ``values`` (argparse checks ``choices`` on the command line, not
    on a default from the environment)."""
    def check(text: str) -> str:
        if text not in values:
            raise argparse.ArgumentTypeError(f"{text!r}: must be one of {', '.join(values)}")
        return text
    check.__name__ = "one of " + "|".join(values)
    return check


def _gobool(text: str) -> bool:
    """Go's strconv.ParseBool, which flanneld's bool flags use (``--ip-masq=false``)."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true or false)")


def _seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more")
    return value


def _env_list(flag: str) -> list[str]:
    """A repeatable flag from the environment: comma-separated, as flanneld's flagSlice.Set."""
    value = _env(flag, "") or ""
    return [v for v in value.split(",") if v]


# Kubernetes subnet-manager flags (flanneld main.go): accepted so that a flanneld command line
# parses, then refused with one clear message if any is used.
KUBE_FLAGS = {"kube-subnet-mgr": "false", "kube-api-url": "", "kubeconfig-file": "",
              "kube-annotation-prefix": "flannel.alpha.coreos.com",
              "net-config-path": "/etc/kube-flannel/net-conf.json", "set-node-network-unavailable": "true"}
# klog flags flanneld inherits; accepted and ignored (vxland's -v has the same meaning).
KLOG_FLAGS = ("vmodule", "log_backtrace_at", "logtostderr", "alsologtostderr", "stderrthreshold", "log_dir",
              "log_file")


def add_etcd_flags(group) -> None:
    """flanneld's etcd flags, for vxland and for vxlanctl doctor."""
    group.add_argument("--etcd-endpoints", default=_env("etcd-endpoints", DEFAULT_ENDPOINTS),
                       help=f"comma-separated etcd endpoints (default {DEFAULT_ENDPOINTS})")
    group.add_argument("--etcd-prefix", default=_env("etcd-prefix", "/coreos.com/network"),
                       help="etcd prefix of the network config and leases (default /coreos.com/network)")
    group.add_argument("--etcd-keyfile", default=_env("etcd-keyfile"), help="TLS key for etcd")
    group.add_argument("--etcd-certfile", default=_env("etcd-certfile"), help="TLS certificate for etcd")
    group.add_argument("--etcd-cafile", default=_env("etcd-cafile"), help="CA to verify etcd's certificate")
    group.add_argument("--etcd-username", default=_env("etcd-username"), help="etcd user")
    group.add_argument("--etcd-password", default=_env("etcd-password"), help="etcd password")
    group.add_argument("--etcd-api", type=_one_of("auto", "v3", "v2"), metavar="{auto,v3,v2}",
                       default=_env("etcd-api", "auto"),
                       help="etcd keyspace (vxland flag): v3 as flanneld >= 0.18, v2 as flanneld <= 0.17 (etcd "
                            "started with --enable-v2), or auto: the one holding <prefix>/config (default auto)")


def etcd_settings(args: argparse.Namespace):
    from vxlan.registry.select import EtcdSettings

    return EtcdSettings(endpoints=args.etcd_endpoints, prefix=args.etcd_prefix, keyfile=args.etcd_keyfile,
                        certfile=args.etcd_certfile, cafile=args.etcd_cafile, username=args.etcd_username,
                        password=args.etcd_password, api=args.etcd_api)


def vxland_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vxland",
        description="Userspace VXLAN data plane for flannel overlays (no kernel vxlan module needed). "
                    "A drop-in for flanneld: same flags, same etcd keys, same subnet.env. Joins the "
                    "flannel network in etcd, or a static registry file.",
        epilog="Every flag can also be set as FLANNELD_<FLAG> in the environment (the command line wins); "
               "repeatable flags take a comma-separated list there. As with flanneld, -flag and --flag "
               "are the same, and boolean flags take =true or =false.",
    )
    add_etcd_flags(p.add_argument_group("flanneld flags: etcd"))
    _add_node_flags(p.add_argument_group("flanneld flags: this node"))
    _add_rules_flags(p.add_argument_group("flanneld flags: iptables and routes"))
    _add_health_flags(p.add_argument_group("flanneld flags: health and logging"))
    p.add_argument("--version", action="version", version=f"vxland {vxlan.__version__}")
    kube = p.add_argument_group("flanneld flags vxland does not support (Kubernetes subnet manager)")
    for flag, default in KUBE_FLAGS.items():
        kube.add_argument(f"--{flag}", default=_env(flag, default), nargs="?", const="true",
                          help="refused with an error: vxland has no Kubernetes subnet manager")
    _add_vxland_flags(p.add_argument_group("vxland flags"))
    _add_capture_flags(p.add_argument_group("vxland flags: capture (debugging)"))
    return p


def _boolean(group, flag: str, default: bool, help_text: str) -> None:
    """A Go-style boolean flag: --flag, --flag=true, --flag=false."""
    env = _env(flag)
    group.add_argument(f"--{flag}", type=_gobool, nargs="?", const=True, metavar="BOOL",
                       default=env if env else default, help=f"{help_text} (default {str(default).lower()})")


def _add_node_flags(node) -> None:
    node.add_argument("--iface", action="append", default=_env_list("iface"),
                      help="underlay interface, by name or IPv4 address; repeatable, the first that exists "
                           "wins (default: the interface of the default route)")
    node.add_argument("--iface-regex", action="append", default=_env_list("iface-regex"),
                      help="regex matched against interface names and IPv4 addresses, if no --iface matched; "
                           "repeatable")
    node.add_argument("--iface-can-reach", type=_ipv4, default=_env("iface-can-reach"),
                      help="use the interface the kernel would route this IPv4 address through")
    node.add_argument("--public-ip", type=_ipv4, default=_env("public-ip"),
                      help="IP other nodes reach this one at; goes into our lease (default: the interface's address)")
    node.add_argument("--public-ipv6", type=_ipv6_vtep, default=_env("public-ipv6"),
                      help="IPv6 address other nodes reach this one at with EnableIPv6; goes into our lease "
                           "(default: the interface's first global IPv6 address)")
    node.add_argument("--subnet-file", type=Path, default=Path(_env("subnet-file", "/run/flannel/subnet.env")),
                      help="where to write the subnet.env (default /run/flannel/subnet.env)")
    node.add_argument("--subnet-lease-renew-margin", type=_minutes,
                      default=_env("subnet-lease-renew-margin", "60"),
                      help="renew the lease this many minutes before it expires (1..1439, default 60)")


def _add_rules_flags(rules) -> None:
    _boolean(rules, "ip-masq", False, "masquerade traffic leaving the overlay (flanneld's FLANNEL-POSTRTG rules)")
    _boolean(rules, "ip-masq-fully-random-disable", False, "do not add --random-fully to the MASQUERADE rules")
    rules.add_argument("--iptables-resync", type=_seconds, default=_env("iptables-resync", "5") or "5",
                       help="re-check the iptables rules every this many seconds (default 5)")
    _boolean(rules, "iptables-forward-rules", True, "accept forwarding to and from the Network (FLANNEL-FWD)")
    _boolean(rules, "ip-blackhole-route", False, "add a blackhole route for this node's subnet")


def _add_health_flags(health) -> None:
    health.add_argument("--healthz-ip", type=_ipv4, default=_env("healthz-ip", "0.0.0.0"),
                        help="address for /healthz, /readyz, /metrics and /peers (default 0.0.0.0)")
    health.add_argument("--healthz-port", type=_port, default=_env("healthz-port", "0") or "0",
                        help="port for /healthz, /readyz, /metrics and /peers; 0 disables them (default 0)")
    health.add_argument("-v", "--v", dest="verbosity", type=int, nargs="?", const=1,
                        default=_env("v", "0") or "0", help="log verbosity; 1 or more logs debug lines")
    for flag in KLOG_FLAGS:
        health.add_argument(f"--{flag}", default=_env(flag), help=argparse.SUPPRESS)


def _add_vxland_flags(extra) -> None:
    extra.add_argument("--check", action="store_true",
                       help="check the flags, the data plane's code and the network config (from etcd or the "
                            "registry file), then exit: 0 if vxland would start with them; what a reload "
                            "(SIGHUP) runs before it re-executes")
    extra.add_argument("--registry-file", type=Path, default=_env("registry-file"),
                       help="static mode: read the config and leases from this JSON file instead of etcd; "
                            "re-read when it changes")
    extra.add_argument("--tun-name", default=_env("tun-name"),
                       help="TUN device name (default flannel.<VNI>)")
    extra.add_argument("--no-offload", action="store_true", default=_env_bool("no-offload"),
                       help="turn off TUN TSO/GRO and UDP GSO/GRO (one packet per system call)")
    extra.add_argument("--outer-source-ports", type=int, metavar="N",
                       default=_env("outer-source-ports", "32") or "32",
                       help="send each inner flow from one of N UDP source ports of the kernel's ephemeral range, "
                            "picked by a hash of the flow, as a kernel vxlan device spreads flows for ECMP and "
                            "RSS (default 32, the most; per underlay family); 1: every flow from the bound port")
    _add_choice(extra, "--tunnel-gso", ("auto", "off"),
                help="auto (default): a pod's TCP super-packet leaves whole, as one UDP tunnel GSO frame like "
                     "a kernel vxlan device's (a TAP with TUN_F_UDP_TUNNEL_GSO, Linux >= 6.17, and a tc "
                     "program that sends its frames out of the --iface, Linux >= 6.6), else as a train of "
                     "datagrams; off: always the train")
    _add_choice(extra, "--underlay-rx", ("auto", "udp"),
                help="auto (default): receive tunnel traffic from a packet socket that tells which checksums "
                     "a kernel peer left unfinished and keeps its super-packets whole (when the TUN takes "
                     "offloads); udp: from the UDP socket (kernel peers then need tx checksum offload off)")
    extra.add_argument("--strict-source", action="store_true", default=_env_bool("strict-source"),
                       help="drop (and count as spoofed_source) tunnelled packets whose inner source is not in "
                            "a subnet leased to the VTEP that sent them (flannel has no such check; off by default)")
    extra.add_argument("--engine-nice", type=int, default=_env("engine-nice", str(ENGINE_NICE)) or str(ENGINE_NICE),
                       help=f"nice value of the two data-plane threads, -20..19 (default {ENGINE_NICE}); a negative "
                            "value needs CAP_SYS_NICE")
    _add_choice(extra, "--engine-sched", ("auto", "other", "batch"),
                help="scheduling policy of the two data-plane threads: other (SCHED_OTHER: a woken thread "
                     "preempts the running task, as the kernel's softirq would), batch (SCHED_BATCH: it "
                     "waits for the task's time slice: fewer wake-ups and losses under dense traffic, "
                     "milliseconds of latency on a busy host), auto (default): other while packets come "
                     "sparsely, batch while they come densely")
    extra.add_argument("--log-format", type=_one_of("text", "json"), metavar="{text,json}",
                       default=_env("log-format", "text"),
                       help="text (default) or json: one object per line with time, level, logger, message")


def _add_capture_flags(cap) -> None:
    cap.add_argument("--capture", type=Path, default=_env("capture"),
                     help="write a pcapng of the underlay and the overlay to this file (mode 0600); "
                          "SIGUSR1 stops it and, sent again, starts PATH.c1, PATH.c2 ...")
    cap.add_argument("--capture-filter", default=_env("capture-filter"),
                     help="keep only matching packets: peer=IP net=CIDR host=IP proto=tcp|udp|icmp|N (all must match)")
    cap.add_argument("--capture-count", type=int, default=_env("capture-count", "0") or "0",
                     help="stop after this many packets (0: no limit)")
    cap.add_argument("--capture-max-bytes", type=_size, default=_env("capture-max-bytes", "0") or "0",
                     help="rotate to PATH.1, PATH.2 ... past this size (e.g. 100M; 0: never)")
    cap.add_argument("--capture-snaplen", type=int, default=_env("capture-snaplen", "2048") or "2048",
                     help="bytes kept of each packet, 64-65535 (default 2048; the rings take 8192 x this)")
    cap.add_argument("--trace", action="store_true", default=_env_bool("trace"),
                     help="one line per packet to stderr (direction, peer, inner 5-tuple, length, drop reason)")
    cap.add_argument("--trace-rate", type=int, default=_env("trace-rate", "100") or "100",
                     help="at most this many --trace lines a second; the rest are counted (default 100)")
    cap.add_argument("--debug-allow", action="append", type=_cidr, default=[],
                     help="also answer /debug/* (packet capture) for clients in this CIDR; repeatable "
                          "(default: loopback only)")


def go_style_argv(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Go's flag package takes ``-name`` for ``--name``: rewrite those of our long flags."""
    longs = {opt[2:] for action in parser._actions for opt in action.option_strings if opt.startswith("--")}
    out = []
    for arg in argv:
        if arg == "--":
            out.extend(argv[len(out):])
            break
        if arg.startswith("-") and not arg.startswith("--") and arg[1:].split("=", 1)[0] in longs:
            arg = "-" + arg
        out.append(arg)
    return out


def kube_flags_used(args: argparse.Namespace) -> list[str]:
    """The Kubernetes subnet-manager flags set to anything but flanneld's default."""
    used = []
    for flag, default in KUBE_FLAGS.items():
        value = getattr(args, flag.replace("-", "_"))
        if flag in ("kube-subnet-mgr", "set-node-network-unavailable"):
            if _gobool(value) != _gobool(default):
                used.append(flag)
        elif value != default:
            used.append(flag)
    return used


def setup_logging(verbosity: int, fmt: str = "text") -> None:
    from vxlan import logfmt

    logfmt.setup(verbosity, fmt)


def make_registry(args: argparse.Namespace):
    """The static file registry, or etcd as flanneld would use it; ValueError on bad flags."""
    if args.registry_file is not None:
        from vxlan.registry.file import FileRegistry

        return FileRegistry(args.registry_file)
    from vxlan import subnetenv
    from vxlan.registry import select

    return select.make_registry(etcd_settings(args), previous_subnet=subnetenv.previous_subnet(args.subnet_file),
                                renew_margin_s=args.subnet_lease_renew_margin * 60,
                                previous_subnet6=subnetenv.previous_subnet6(args.subnet_file))


def vxland_main(argv: list[str] | None = None) -> int:
    # A reload's bridge is forked from the daemon (fastpath/vx_bridge.c) and never returns to
    # Python; gRPC's fork handlers (etcd v3) would start threads in it and crash it. Before gRPC
    # loads, so that it registers none.
    os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "false"
    # Until the daemon's handler is in place, SIGUSR1 (capture toggle) must not end the process.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    parser = vxland_parser()
    args = parser.parse_args(go_style_argv(parser, sys.argv[1:] if argv is None else argv))
    setup_logging(args.verbosity, args.log_format)
    log = logging.getLogger("vxland")
    refused = _refuse_flags(args, log)
    if refused is not None:
        return refused
    if args.check:
        os.nice(10)  # a reload runs it beside the daemon's data plane: not at the engine's expense
    from vxlan import handover

    handover.yield_to_bridge()
    import uvloop  # imported late: --help and flag errors should not need it

    from vxlan.daemon import Daemon, StartupError

    try:
        registry = make_registry(args)
    except (ValueError, OSError) as exc:
        log.error("%s", exc)
        return 2
    if args.check:
        return uvloop.run(_check_start(registry, log))
    try:
        return uvloop.run(Daemon(daemon_options(args), registry).run())
    except StartupError as exc:
        log.error("%s", exc)
        return 1


CHECK_TIMEOUT_S = 15.0  # --check: how long etcd may take to give the config


async def _check_start(registry, log: logging.Logger) -> int:
    """--check: what start-up reads before it touches the host, without touching it."""
    import fastpath
    from vxlan.config import ConfigError, check_supported
    from vxlan.registry import RegistryError

    try:
        config = await asyncio.wait_for(registry.get_config(), CHECK_TIMEOUT_S)
        check_supported(config)
    except TimeoutError:
        log.error("check: no network config from %s within %.0f s", registry.name, CHECK_TIMEOUT_S)
        return 1
    except (ConfigError, RegistryError) as exc:
        log.error("check: invalid network config: %s", exc)
        return 1
    finally:
        await registry.close()
    log.info("check: ok (data plane %s, backend %s)", fastpath.IMPLEMENTATION, config.backend.type)
    return 0


def _refuse_flags(args: argparse.Namespace, log: logging.Logger) -> int | None:
    """Log what is wrong with the flags and return the exit status; None when they are fine."""
    kube = kube_flags_used(args)
    if kube:
        log.error("--%s: not supported: vxland has no Kubernetes subnet manager; it takes the network "
                  "config and leases from etcd (--etcd-endpoints) as flanneld without --kube-subnet-mgr does, "
                  "or from --registry-file", ", --".join(kube))
        return 2
    for flag in KLOG_FLAGS:
        if getattr(args, flag) is not None:
            log.info("-%s accepted for flanneld compatibility and ignored (use -v)", flag)
    problem = _flag_problem(args)
    if problem is not None:
        log.error("%s", problem)
        return 2
    if not 0 < args.subnet_lease_renew_margin < 24 * 60:
        log.error("Invalid subnet-lease-renew-margin option, out of acceptable range (1..1439 minutes)")
        return 1  # as flanneld (main.go)
    return None


def _flag_problem(args: argparse.Namespace) -> str | None:
    """The first flag value out of its range, said as the error line."""
    for pattern in args.iface_regex:
        try:
            re.compile(pattern)
        except re.error as exc:
            return f"--iface-regex {pattern!r}: {exc}"
    checks = [(64 <= args.capture_snaplen <= 65535, f"--capture-snaplen {args.capture_snaplen}: must be 64..65535"),
              (-20 <= args.engine_nice <= 19, f"--engine-nice {args.engine_nice}: must be -20..19"),
              (args.trace_rate >= 1, f"--trace-rate {args.trace_rate}: must be 1 or more"),
              (args.capture_count >= 0, f"--capture-count {args.capture_count}: must be 0 or more"),
              (1 <= args.outer_source_ports <= 32, f"--outer-source-ports {args.outer_source_ports}: must be 1..32")]
    for ok, problem in checks:
        if not ok:
            return problem
    if args.capture_filter:
        from vxlan.capture import Filter

        try:
            Filter.parse(args.capture_filter)
        except ValueError as exc:
            return f"--capture-filter: {exc}"
    return None


def daemon_options(args: argparse.Namespace):
    """vxlan.options.Options from the parsed flags."""
    from vxlan.options import Options

    return Options(subnet_file=args.subnet_file, iface=tuple(args.iface), iface_regex=tuple(args.iface_regex),
                   iface_can_reach=args.iface_can_reach, public_ip=args.public_ip, public_ipv6=args.public_ipv6,
                   ip_masq=args.ip_masq, masq_random_fully=not args.ip_masq_fully_random_disable,
                   iptables_resync_s=args.iptables_resync, iptables_forward_rules=args.iptables_forward_rules,
                   blackhole_route=args.ip_blackhole_route,
                   tun_name=args.tun_name, healthz_ip=args.healthz_ip, healthz_port=args.healthz_port,
                   offload=not args.no_offload, underlay_rx=args.underlay_rx, engine_nice=args.engine_nice,
                   engine_sched=args.engine_sched,
                   tunnel_gso=args.tunnel_gso,
                   outer_source_ports=args.outer_source_ports,
                   strict_source=args.strict_source,
                   capture=args.capture, capture_filter=args.capture_filter,
                   capture_count=args.capture_count, capture_max_bytes=args.capture_max_bytes,
                   capture_snaplen=args.capture_snaplen, debug_allow=tuple(args.debug_allow),
                   trace_rate=args.trace_rate if args.trace else 0)


def vxlanctl_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vxlanctl", description="Tools around vxland.")
    sub = p.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="3-host lab (2 vxland, 1 kernel vxlan) on etcd: ping, iperf3, teardown")
    demo.add_argument("--vni", type=int, default=1)
    demo.add_argument("--port", type=_port, default=8472)
    demo.add_argument("--seconds", type=int, default=5, help="iperf3 duration per pair (default 5)")
    demo.add_argument("--static", action="store_true", help="use a static registry file instead of etcd")
    demo.add_argument("--etcd-api", choices=("v3", "v2"), default="v3",
                      help="the etcd store the lab's cluster uses: v3 (flanneld >= 0.18) or v2 (flanneld <= 0.17, "
                           "etcd --enable-v2; the kernel node then speaks v2 only) (default v3)")
    demo.add_argument("--ipv6", action="store_true",
                      help="a dual-stack cluster (EnableIPv6): pings and iperf3 over IPv6 too, through the IPv6 "
                           "underlay")
    demo.add_argument("--ipv6-only", action="store_true",
                      help="an IPv6-only cluster (EnableIPv4 false): pings and iperf3 over IPv6 alone")
    check = sub.add_parser("check", help="validate a registry file and print what it holds")
    check.add_argument("file", type=Path)
    decode = sub.add_parser("decode", help="print a capture (pcapng from vxland --capture) as a table")
    decode.add_argument("file", type=Path)
    decode.add_argument("-d", "--vxlan-port", type=int, action="append", default=[],
                        help="also decode UDP on this port as VXLAN (8472 and 4789 always are)")
    doctor = sub.add_parser("doctor", help="check that this host can run vxland; say how to fix what is not")
    add_etcd_flags(doctor)
    doctor.add_argument("--registry-file", type=Path, default=_env("registry-file"),
                        help="check this static registry instead of etcd")
    doctor.add_argument("--iface", action="append", default=_env_list("iface"))
    doctor.add_argument("--public-ipv6", type=_ipv6_vtep, default=_env("public-ipv6"),
                        help="with EnableIPv6: the IPv6 underlay address vxland is given (else the interface's)")
    doctor.add_argument("--healthz-port", type=_port, default=_env("healthz-port", "0") or "0",
                        help="a running vxland's health port: its UDP port then counts as in use by it")
    _add_plan_parser(sub.add_parser("plan", help="print this host's commands that do flanneld's job by hand "
                                                 "(ip route, ip neigh, bridge fdb, iptables, subnet.env); --apply "
                                                 "runs them once"))
    peers = sub.add_parser("peers", help="the running vxland's peer table (from its /peers endpoint)")
    peers.add_argument("--healthz-ip", default="127.0.0.1")
    peers.add_argument("--healthz-port", type=_port, default=_env("healthz-port", "2401") or "2401")
    peers.add_argument("--json", action="store_true", help="print the JSON as served")
    reload = sub.add_parser("reload", help="reload the running vxland in place (SIGHUP): same PID, new code, the "
                                           "TUN and sockets kept; pods do not notice")
    reload.add_argument("--port", type=_port, default=8472,
                        help="the VXLAN port of the vxland to reload, in this network namespace (default 8472)")
    reload.add_argument("--healthz-port", type=_port, default=_env("healthz-port", "0") or "0",
                        help="its health port: wait until the new code serves /metrics (default 0: do not wait)")
    lab = sub.add_parser("lab", help="lab housekeeping")
    lab.add_argument("action", choices=["clean"],
                     help="clean: delete namespaces left by labs whose process is gone")
    return p


def _add_plan_parser(plan: argparse.ArgumentParser) -> None:
    add_etcd_flags(plan)
    plan.add_argument("--registry-file", type=Path, default=_env("registry-file"),
                      help="read this static registry instead of etcd")
    plan.add_argument("--iface", action="append", default=_env_list("iface"),
                      help="underlay interface, by name or IPv4 address (default: that of the default route)")
    plan.add_argument("--public-ip", type=_ipv4, default=_env("public-ip"),
                      help="this host's PublicIP: the lease it holds (default: the interface's address)")
    plan.add_argument("--subnet-file", type=Path, default=Path(_env("subnet-file", "/run/flannel/subnet.env")))
    plan.add_argument("--ip-masq", type=_gobool, nargs="?", const=True, default=_env_bool("ip-masq"),
                      help="include flanneld's masquerade rules")
    plan.add_argument("--iptables-forward-rules", type=_gobool, nargs="?", const=True, default=True,
                      help="include flanneld's FORWARD rules (default true)")
    plan.add_argument("--format", choices=("sh", "json"), default="sh", help="a shell script (default) or JSON")
    plan.add_argument("--apply", action="store_true", help="run the commands once (steps already done are kept)")


def print_peers(ip: str, port: int, as_json: bool) -> int:
    import json
    import urllib.request

    url = f"http://{ip}:{port}/peers"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            doc = json.load(resp)
    except OSError as exc:
        print(f"cannot read {url}: {exc} (is vxland running with --healthz-port={port}?)", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(doc, indent=1))
        return 0
    print(f"{'SUBNET':<20} {'PUBLIC IP':<16} {'VIA':<7} {'VTEP MAC':<18} VNI")
    for p in doc["peers"]:
        print(f"{p['subnet']:<20} {p['public_ip']:<16} {p['via']:<7} {p['vtep_mac'] or '-':<18} {p['vni'] or '-'}")
    print(f"{len(doc['peers'])} peer(s)")
    return 0


def vxlanctl_main(argv: list[str] | None = None) -> int:
    args = vxlanctl_parser().parse_args(argv)
    setup_logging(0)
    return VXLANCTL_COMMANDS[args.command](args)


def _check(args: argparse.Namespace) -> int:
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


def _decode(args: argparse.Namespace) -> int:
    from vxlan import decode

    return decode.run(args.file, args.vxlan_port)


def _doctor(args: argparse.Namespace) -> int:
    from vxlan import doctor

    checks = doctor.run_all(args, None if args.registry_file else etcd_settings(args))
    print(doctor.render(checks))
    return 1 if any(c.status == "FAIL" for c in checks) else 0


def _plan(args: argparse.Namespace) -> int:
    from vxlan import planrun

    req = planrun.Request(registry_file=args.registry_file,
                          etcd=None if args.registry_file else etcd_settings(args), iface=tuple(args.iface),
                          public_ip=args.public_ip, subnet_file=args.subnet_file, ip_masq=args.ip_masq,
                          forward_rules=args.iptables_forward_rules)
    return planrun.run(req, args.format, args.apply)


def _lab(args: argparse.Namespace) -> int:
    from vxlan import lab

    for name in lab.clean_stale():
        print(f"deleted namespace {name}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from vxlan.lab import demo  # the lab is imported by these two commands only, lazily

    return demo.run(vni=args.vni, port=args.port, seconds=args.seconds,
                    registry="file" if args.static else "etcd", etcd_api=args.etcd_api, ipv6=args.ipv6,
                    ipv6_only=args.ipv6_only)


RELOAD_WAIT_S = 60.0


def _reload(args: argparse.Namespace) -> int:
    """Find the vxland that holds the VXLAN port here, send it SIGHUP, and with --healthz-port
    wait for the new image (process_start_time_seconds moves; a refused reload does not)."""
    import time
    import urllib.request

    from vxlan.doctor import is_vxland, port_holder

    holder = port_holder(args.port)
    if holder is None or not is_vxland(holder[1]):
        print(f"vxlanctl reload: no vxland holds UDP port {args.port} in this network namespace", file=sys.stderr)
        return 1
    pid = holder[0]

    def started() -> float | None:
        try:
            url = f"http://127.0.0.1:{args.healthz_port}/metrics"
            with urllib.request.urlopen(url, timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return None
        match = re.search(r"^process_start_time_seconds (\S+)$", text, re.M)
        return float(match[1]) if match else None

    before = started() if args.healthz_port else None
    os.kill(pid, signal.SIGHUP)
    if before is None:
        print(f"sent SIGHUP to vxland (pid {pid}); its log says how the reload went")
        return 0
    deadline = time.monotonic() + RELOAD_WAIT_S
    while time.monotonic() < deadline:
        now = started()
        if now is not None and now > before:
            print(f"vxland (pid {pid}) reloaded: the new code serves :{args.healthz_port}")
            return 0
        time.sleep(0.2)
    print(f"vxland (pid {pid}) did not reload within {RELOAD_WAIT_S:.0f} s (refused? its log says why)",
          file=sys.stderr)
    return 1


VXLANCTL_COMMANDS = {"check": _check, "decode": _decode, "doctor": _doctor, "plan": _plan, "lab": _lab,
                     "reload": _reload,
                     "demo": _demo, "peers": lambda args: print_peers(args.healthz_ip, args.healthz_port, args.json)}


if __name__ == "__main__":
    sys.exit(vxland_main())
