"""Namespace labs: hosts on an underlay bridge, a pod behind each, vxland or kernel vxlan nodes.

Used by ``vxlanctl demo``, the integration tests and ``bench/``. Topology::

    ns <lab>-ul:  bridge br0 ── veth ── ns <lab>-h1: eth0 198.18.0.1/24, TUN or flannel.<VNI>
                              └─ veth ── ns <lab>-h2: eth0 198.18.0.2/24 ...
    each host: veth "pod" S.1/24 ── ns <lab>-p1: eth0 S.2/24, default via S.1 (MTU 1450)

Every link, address and route lives inside namespaces the lab created; nothing is added to
the root namespace. Names carry the creating PID (``vxl-<pid>-<n>-h1``), so ``clean_stale()``
can delete the leftovers of a lab whose process died, and never touches a live one.
Addresses: underlay 198.18.0.0/24 (RFC 2544 benchmarking range), overlay 172.7.0.0/16.

A host is ``vxland`` (our daemon, started from the generated registry file), ``kernel`` (a
Linux vxlan device programmed exactly as flanneld >= 0.9 does in pkg/backend/vxlan/) or
``plain`` (an underlay address and a lease, no tunnel: a source of crafted datagrams).
"""

from __future__ import annotations

import atexit
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from vxlan import netconf, plan, subnetenv, wire
from vxlan.config import NO_IPV4_NETWORK, get_ci
from vxlan.lab.etcd import SUBNETS, EtcdLabMixin, EtcdMember, make_certs
from vxlan.lab.util import LabError, sh, stop_process  # noqa: F401 (re-exported)
from vxlan.lease import Lease, make_subnet_key

_counter = itertools.count(1)
_NAME_RE = re.compile(r"^vxl-(\d+)-\d+-")
UNDERLAY = ipaddress.IPv4Network("198.18.0.0/24")
UNDERLAY6 = ipaddress.IPv6Network("fd00:c612::/64")  # dual-stack labs: a ULA (RFC 4193), lab-only
OVERLAY6 = ipaddress.IPv6Network("fd07::/48")  # dual-stack labs' IPv6Network
SEGMENTS = {1: UNDERLAY, 2: ipaddress.IPv4Network("198.19.0.0/24")}  # 2: behind the underlay router
ROUTER_HOST = 254  # the underlay namespace's address on each segment
HEALTHZ_PORT = 2401


def can_run() -> str | None:
    """Why a lab cannot be built here, or None if it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, TUN devices)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    for tool in ("ip", "bridge", "ethtool", "ping"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make install)"
    return None


def kernel_vxlan_missing() -> str | None:
    """Why this kernel cannot make vxlan devices, or None if it can."""
    return netconf.kernel_vxlan_missing()


def clean_stale() -> list[str]:
    """Delete namespaces of labs whose creating process no longer runs; return their names."""
    out = sh(["ip", "netns", "list"], check=False).stdout
    deleted = []
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _NAME_RE.match(name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            sh(["ip", "netns", "del", name], check=False)
            deleted.append(name)
    return deleted


@dataclass
class Host:
    index: int
    kind: str  # "vxland", "kernel" or "plain"
    ns: str
    pod_ns: str
    public_ip: str
    subnet_file: Path
    subnet: ipaddress.IPv4Network | None = None  # file mode: given; etcd mode: once started
    public_ipv6: str | None = None  # dual-stack labs
    subnet6: ipaddress.IPv6Network | None = None  # dual-stack labs, once started (FLANNEL_IPV6_SUBNET)
    vtep_mac: bytes = b""
    registered: bool = True  # file mode: has a lease in the registry file
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    wrap: list[str] = field(default_factory=list)  # a command the node runs under (strace, a sandbox)

    def _net(self) -> ipaddress.IPv4Network:
        if self.subnet is None:
            raise LabError(f"h{self.index} has no subnet yet (not started)")
        return self.subnet

    @property
    def gateway_ip(self) -> str:  # host side of the pod link, FLANNEL_SUBNET's .1
        return str(self._net().network_address + 1)

    @property
    def pod_ip(self) -> str:
        return str(self._net().network_address + 2)

    @property
    def pod_ip6(self) -> str:
        if self.subnet6 is None:
            raise LabError(f"h{self.index} has no IPv6 subnet (no dual-stack lab, or not started)")
        return str(self.subnet6.network_address + 2)

    @property
    def tun_ip(self) -> str:  # the tunnel device's /32
        return str(self._net().network_address)

    def lease_json(self, vni: int, backend_type: str = "vxlan") -> dict:
        if backend_type != "vxlan":
            return {"PublicIP": self.public_ip, "PublicIPv6": None, "BackendType": backend_type}
        return {"PublicIP": self.public_ip, "PublicIPv6": None, "BackendType": "vxlan",
                "BackendData": {"VNI": vni, "VtepMAC": wire.mac_to_str(self.vtep_mac)}}


class Lab(EtcdLabMixin):
    """A lab of ``kinds`` hosts (e.g. ``["vxland", "vxland", "kernel"]``); use as a context manager.

    ``registry="file"``: a static registry file with a lease per host, made up front; kernel
    nodes are programmed once from it. ``registry="etcd"``: a real etcd (``etcd_members``
    members) in the underlay namespace seeded with the network config (in the v3 store, or with
    ``etcd_api="v2"`` in the v2 store of an etcd started with ``--enable-v2``); vxland hosts join
    with ``--etcd-endpoints`` and kernel nodes are driven by ``vxlan.lab.flanneld_emu``; subnets and
    VtepMACs are what the nodes acquire.
    """

    def __init__(self, kinds: list[str], vni: int = 1, port: int = 8472, network: str = "172.7.0.0/16",
                 subnet_len: int = 24, mtu: int = 1500, healthz_port: int = HEALTHZ_PORT,
                 pure_python: bool = False, keep_workdir: bool = False, registry: str = "file",
                 etcd_members: int = 1, seed_config: bool = True, env: dict[str, str] | None = None,
                 defer: tuple[int, ...] = (), kernel_tx_off: bool = False, backend: dict | None = None,
                 segments: tuple[int, ...] = (), etcd_tls: bool = False, etcd_api: str = "v3",
                 ipv6: bool = False, ipv6_only: bool = False) -> None:
        if registry not in ("file", "etcd"):
            raise ValueError(f"registry must be file or etcd, not {registry!r}")
        if ipv6_only and registry != "etcd":
            raise ValueError("an IPv6-only lab runs on etcd (a registry file carries no IPv6-only network)")
        if etcd_api not in ("v3", "v2"):
            raise ValueError(f"etcd_api must be v3 or v2, not {etcd_api!r}")
        # v2: etcd runs with --enable-v2, the config is written with the v2 API and kernel nodes
        # run the emulator as flanneld <= 0.17 (v2 only); vxland nodes find the store themselves.
        self.etcd_api = etcd_api
        self.prefix = f"vxl-{os.getpid()}-{next(_counter)}"
        self.vni = vni
        self.port = port
        self.network = ipaddress.IPv4Network(network)
        self.subnet_len = subnet_len
        self.mtu = mtu
        self.healthz_port = healthz_port
        self.pure_python = pure_python
        self.keep_workdir = keep_workdir
        self.registry = registry
        self.seed_config = seed_config
        self.env = env or {}
        self.defer = set(defer)  # host indices that start() leaves for the caller to start
        # extra keys of the config's Backend (e.g. {"Type": "host-gw"} or {"DirectRouting": True})
        self.backend = backend or {}
        # segments[i-1] = 2 puts host i on a second underlay segment (198.19.0.0/24) that the
        # underlay namespace routes to: a peer "behind a router", for DirectRouting
        self.segments = tuple(segments) or (1,) * len(kinds)
        # Kernel nodes keep their offloads on, as real hosts do (vxland reads their unfinished
        # checksums and super-packets from a packet socket); True turns tx checksum offload off
        # on them, as the old advice for a vxland that receives from a UDP socket (--underlay-rx udp).
        self.kernel_tx_off = kernel_tx_off
        # dual-stack: the hosts get IPv6 underlay addresses too (UNDERLAY6) and the config
        # EnableIPv6 with IPv6Network OVERLAY6; pods get an address of their host's IPv6 subnet
        # ipv6_only: EnableIPv4 false, an IPv6-only overlay (on etcd; the underlay keeps its
        # IPv4 addresses, by which the nodes reach etcd); pods get IPv6 addresses alone
        self.ipv6_only = ipv6_only
        self.ipv6 = ipv6 or ipv6_only
        self.network6 = OVERLAY6 if self.ipv6 else None
        self.underlay_ns = f"{self.prefix}-ul"
        self.workdir = Path(tempfile.mkdtemp(prefix="vxlan-lab-"))
        self.registry_path = self.workdir / "registry.json"
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.hosts = self._make_hosts(kinds)
        self.etcd = [EtcdMember(i, str(UNDERLAY.network_address + 250 + i), self.workdir / f"etcd-m{i}",
                                self.workdir / f"etcd-m{i}.log", tls=etcd_tls,
                                ip6=str(UNDERLAY6.network_address + 250 + i) if self.ipv6 else None)
                     for i in range(1, etcd_members + 1)] if registry == "etcd" else []
        self._torn_down = False

    def _make_hosts(self, kinds: list[str]) -> list[Host]:
        """Hosts 1..n; with a registry file they get their subnets and VtepMACs here, with etcd
        they take what they acquire."""
        subnets = self.network.subnets(new_prefix=self.subnet_len)
        next(subnets)  # flannel skips the first subnet (SubnetMin = Network + 1 subnet)
        hosts = [
            Host(index=i, kind=kind, ns=f"{self.prefix}-h{i}", pod_ns=f"{self.prefix}-p{i}",
                 public_ip=str(SEGMENTS[self.segments[i - 1]].network_address + i),
                 public_ipv6=str(UNDERLAY6.network_address + i) if self.ipv6 else None,
                 subnet_file=self.workdir / f"h{i}.subnet.env")
            for i, kind in enumerate(kinds, start=1)
        ]
        for host in hosts:
            if host.kind not in ("vxland", "kernel", "plain"):
                raise ValueError(f"unknown host kind {host.kind!r}")
            if self.registry == "file":
                host.subnet, host.vtep_mac = next(subnets), wire.random_vtep_mac()
        return hosts

    # -- life cycle -----------------------------------------------------------------------
    def __enter__(self) -> Lab:
        atexit.register(self.teardown)
        try:
            self.build()
            self.start()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def build(self) -> None:
        """Namespaces, underlay bridge, etcd, host and pod links; no nodes yet."""
        self._add_ns(self.underlay_ns)
        for seg in sorted(set(self.segments) | {1}):
            br = f"br{seg - 1}"
            # a MAC of its own: a bridge without one takes its lowest port's, so a namespace
            # joining later (add_outside) could change it under the etcd address on br0 and
            # leave every host's ARP entry for etcd pointing nowhere for up to a minute
            sh(["ip", "-n", self.underlay_ns, "link", "add", br, "address", f"02:76:78:00:00:{seg:02x}",
                "type", "bridge"])
            sh(["ip", "-n", self.underlay_ns, "link", "set", br, "up"])
            if len(set(self.segments)) > 1:  # the underlay namespace routes between segments
                router = SEGMENTS[seg].network_address + ROUTER_HOST
                sh(["ip", "-n", self.underlay_ns, "addr", "add", f"{router}/24", "dev", br])
        if len(set(self.segments)) > 1:
            sh(["sysctl", "-qw", "net.ipv4.ip_forward=1"], ns=self.underlay_ns)
        if self.etcd and self.etcd[0].tls:
            make_certs(self.workdir, [m.ip for m in self.etcd])
        for host in self.hosts:
            self._build_host(host)
        if self.registry == "file":
            self.write_registry()
            for host in self.hosts:
                self._address_pod(host)
        else:
            for member in self.etcd:
                sh(["ip", "-n", self.underlay_ns, "addr", "add", f"{member.ip}/{UNDERLAY.prefixlen}", "dev", "br0"])
                if member.ip6:
                    sh(["ip", "-n", self.underlay_ns, "addr", "add", f"{member.ip6}/{UNDERLAY6.prefixlen}", "dev",
                        "br0", "nodad"])
            for member in self.etcd:
                self.start_etcd(member, wait=False)
            for member in self.etcd:
                self._wait_etcd(member)
            if self.seed_config:
                self.put_config()

    def _add_ns(self, name: str) -> None:
        sh(["ip", "netns", "add", name])
        self.namespaces.append(name)
        if self.ipv6:
            # no duplicate address detection in the lab's namespaces (no one else is on their
            # links): every IPv6 address, link-local ones too, is usable at once, so the first
            # packet after start-up does not meet a tentative address
            sh(["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"], ns=name)
        sh(["ip", "-n", name, "link", "set", "lo", "up"])

    def _build_host(self, host: Host) -> None:
        ul, ns = self.underlay_ns, host.ns
        self._add_ns(ns)
        seg = self.segments[host.index - 1]
        sh(["ip", "-n", ul, "link", "add", f"h{host.index}", "type", "veth", "peer", "name", "eth0", "netns", ns])
        sh(["ip", "-n", ul, "link", "set", f"h{host.index}", "master", f"br{seg - 1}", "up"])
        sh(["ip", "-n", ns, "link", "set", "eth0", "mtu", str(self.mtu), "up"])
        sh(["ip", "-n", ul, "link", "set", f"h{host.index}", "mtu", str(self.mtu)])
        sh(["ip", "-n", ns, "addr", "add", f"{host.public_ip}/{UNDERLAY.prefixlen}", "dev", "eth0"])
        if host.public_ipv6 is not None:  # nodad: usable at once, and nobody else has it
            sh(["ip", "-n", ns, "addr", "add", f"{host.public_ipv6}/{UNDERLAY6.prefixlen}", "dev", "eth0", "nodad"])
            sh(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"], ns=ns)
        if len(set(self.segments)) > 1:
            for other, net in SEGMENTS.items():
                if other != seg and (other in self.segments or other == 1):
                    via = SEGMENTS[seg].network_address + ROUTER_HOST
                    sh(["ip", "-n", ns, "route", "replace", str(net), "via", str(via)])
        sh(["sysctl", "-qw", "net.ipv4.ip_forward=1"], ns=ns)
        # The pod: a namespace behind a veth, MTU = FLANNEL_MTU as the CNI plugin would set.
        pod_mtu = str(self.mtu - wire.ENCAP_OVERHEAD)
        self._add_ns(host.pod_ns)
        sh(["ip", "-n", ns, "link", "add", "pod", "type", "veth", "peer", "name", "eth0", "netns", host.pod_ns])
        sh(["ip", "-n", ns, "link", "set", "pod", "mtu", pod_mtu, "up"])
        sh(["ip", "-n", host.pod_ns, "link", "set", "eth0", "mtu", pod_mtu, "up"])
        if host.kind == "kernel" and self.kernel_tx_off:
            # veth has no checksum hardware: a kernel vxlan device sending into it leaves inner
            # TCP checksums unfinished, which a receiver on a UDP socket cannot tell.
            for dev, where in (("eth0", ns), ("eth0", host.pod_ns), ("pod", ns)):
                sh(["ethtool", "-K", dev, "tx", "off"], ns=where)

    def _address_pod(self, host: Host) -> None:
        """Give the pod link its addresses once the host's subnet is known (what CNI does with
        FLANNEL_SUBNET): S.1 on the host side, S.2 in the pod, default route via S.1."""
        sh(["ip", "-n", host.pod_ns, "addr", "flush", "dev", "eth0"])
        if not self.ipv6_only:
            sh(["ip", "-n", host.ns, "addr", "replace", f"{host.gateway_ip}/{self.subnet_len}", "dev", "pod"])
            sh(["ip", "-n", host.pod_ns, "addr", "add", f"{host.pod_ip}/{self.subnet_len}", "dev", "eth0"])
            sh(["ip", "-n", host.pod_ns, "route", "replace", "default", "via", host.gateway_ip])
        if host.subnet6 is not None:
            gw6, prefix6 = host.subnet6.network_address + 1, host.subnet6.prefixlen
            sh(["ip", "-n", host.ns, "-6", "addr", "replace", f"{gw6}/{prefix6}", "dev", "pod", "nodad"])
            sh(["ip", "-n", host.pod_ns, "-6", "addr", "add", f"{host.pod_ip6}/{prefix6}", "dev", "eth0", "nodad"])
            sh(["ip", "-n", host.pod_ns, "-6", "route", "replace", "default", "via", str(gw6)])

    def start(self) -> None:
        for host in self.hosts:
            if host.index in self.defer:
                continue
            if host.kind == "kernel":
                if self.registry == "file":
                    self._program_kernel_node(host)
                else:
                    self.start_node(host)
        for host in self.hosts:
            if host.kind == "vxland" and host.index not in self.defer:
                self.start_node(host)

    def teardown(self) -> None:
        if self._torn_down:
            return
        self._torn_down = True
        for proc in reversed(self.processes):
            stop_process(proc)
        for name in reversed(self.namespaces):
            sh(["ip", "netns", "del", name], check=False)
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        atexit.unregister(self.teardown)

    # -- registry file --------------------------------------------------------------------
    def backend_config(self) -> dict:
        """The config's Backend: vxlan with the lab's VNI and port, plus ``backend``'s keys."""
        backend: dict = {"Type": "vxlan"}
        if self.vni != 1:
            backend["VNI"] = self.vni
        if self.port != 8472:
            backend["Port"] = self.port
        backend.update(self.backend)
        if backend["Type"] != "vxlan":
            backend.pop("VNI", None)
            backend.pop("Port", None)
        return backend

    def registry_doc(self) -> dict:
        return {
            "config": {"Network": str(self.network), "SubnetLen": self.subnet_len,
                       "Backend": {"VNI": self.vni, "Port": self.port, **self.backend_config()}},
            "subnets": {f"{h._net().network_address}-{h._net().prefixlen}":
                        h.lease_json(self.vni, self.backend_config()["Type"])
                        for h in self.hosts if h.registered},
        }

    def write_registry(self, doc: dict | None = None) -> None:
        """Replace the registry file atomically (as an operator's editor or config tool would)."""
        tmp = self.registry_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc if doc is not None else self.registry_doc(), indent=1))
        os.replace(tmp, self.registry_path)

    # -- nodes ----------------------------------------------------------------------------
    def _node_cmd(self, host: Host) -> tuple[list[str], str]:
        """The command that runs ``host``'s node, and the log line that says it is up."""
        if host.kind == "kernel":
            return ([sys.executable, "-m", "vxlan.lab.flanneld_emu", "--etcd-endpoints", self.etcd_endpoints,
                     *self.etcd_tls_args(), "--etcd-api", self.etcd_api, "--iface", "eth0",
                     "--subnet-file", str(host.subnet_file), *(["--tx-checksum-off"] if self.kernel_tx_off else [])],
                    "flanneld-emu started")
        registry = (["--registry-file", str(self.registry_path)] if self.registry == "file"
                    else ["--etcd-endpoints", self.etcd_endpoints, *self.etcd_tls_args()])
        # No FLANNEL-FWD rules unless a test asks (the lab's FORWARD policy is ACCEPT anyway):
        # the kernel nodes it compares against have none, and each rule costs per packet.
        return ([sys.executable, "-m", "vxlan", *registry, "--iface", "eth0", "--subnet-file",
                 str(host.subnet_file), "--healthz-port", str(self.healthz_port), "--iptables-forward-rules=false",
                 *host.extra_args],
                "vxland started")

    def start_node(self, host: Host, wait_s: float = 20.0, wait: bool = True) -> None:
        """Start vxland (or, for a kernel node in etcd mode, the flanneld emulator)."""
        host.log_path = self.workdir / f"h{host.index}.log"
        cmd, ready = self._node_cmd(host)
        env = {**os.environ, **self.env}
        if self.pure_python:
            env["VXLAN_PURE_PYTHON"] = "1"
        offset = host.log_path.stat().st_size if host.log_path.exists() else 0
        with open(host.log_path, "ab") as log:
            host.proc = self.popen(host.ns, [*host.wrap, *cmd], stdout=log, stderr=subprocess.STDOUT, env=env,
                                   stdin=subprocess.DEVNULL)
        if wait:
            self.wait_node(host, offset, ready, wait_s)

    def wait_node(self, host: Host, offset: int = 0, ready: str | None = None, wait_s: float = 20.0) -> None:
        ready = ready or self._node_cmd(host)[1]
        assert host.proc is not None and host.log_path is not None
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            text = host.log_path.read_text(errors="replace")[offset:]
            if any(ready in ln for ln in text.splitlines()):  # started (subnet.env is written by then)
                self._learn(host)
                return
            if host.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise LabError(f"h{host.index} ({host.kind}) did not start:\n{self.log(host)[-3000:]}")

    def _learn(self, host: Host) -> None:
        """The node's lease as any other node would learn it: its subnet from the subnet.env it
        wrote (FLANNEL_SUBNET), its VtepMAC from its lease in the registry; then the pod gets
        its addresses. (Not from the log: a log line is no interface.)"""
        new_subnet = subnetenv.previous_subnet(host.subnet_file) if not self.ipv6_only else NO_IPV4_NETWORK
        if new_subnet is None:
            raise LabError(f"h{host.index} started but {host.subnet_file} has no FLANNEL_SUBNET")
        new_subnet6 = subnetenv.previous_subnet6(host.subnet_file) if self.ipv6 else None
        changed = new_subnet != host.subnet or new_subnet6 != host.subnet6
        host.subnet, host.subnet6 = new_subnet, new_subnet6
        if self.registry == "etcd":
            host.vtep_mac = self._lease_mac(new_subnet, new_subnet6)
        if changed or self.registry == "etcd":
            self._address_pod(host)

    def _lease_mac(self, subnet: ipaddress.IPv4Network, subnet6: ipaddress.IPv6Network | None = None) -> bytes:
        """The VtepMAC of the lease for ``subnet`` (& ``subnet6``) in etcd (b"" for backends without one)."""
        key = f"{SUBNETS}/{make_subnet_key(subnet, subnet6)}"
        if self.etcd_api == "v2":
            value = self.etcdctl("get", key, api="v2").stdout
        else:
            value = self.etcdctl("get", key, "--print-value-only").stdout
        try:
            mac = get_ci(get_ci(json.loads(value), "BackendData") or {}, "VtepMAC")
        except (ValueError, AttributeError):
            raise LabError(f"the lease {key} is no lease JSON: {value!r}") from None
        return wire.mac_to_bytes(mac) if mac else b""

    def wait_started(self, host: Host, offset: int, wait_s: float = 30.0) -> None:
        """Until the node's log says it started again past ``offset`` (a node started by the
        caller with what it had before: its pod keeps its addresses), or LabError with the log."""
        assert host.proc is not None and host.log_path is not None
        deadline = time.monotonic() + wait_s
        while "vxland started" not in host.log_path.read_text(errors="replace")[offset:]:
            if host.proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"h{host.index} did not start again:\n{host.log_path.read_text()[offset:][-3000:]}")
            time.sleep(0.01)

    def reload_vxland(self, host: Host, wait_s: float = 30.0) -> str:
        """SIGHUP: the node re-executes itself in place (vxlan.handover); returns the log line
        that says the new code forwards, or raises LabError with the log's end (a refused reload
        says why there). The pod keeps its addresses: nothing else changes."""
        assert host.proc is not None and host.log_path is not None
        offset = host.log_path.stat().st_size
        host.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            lines = host.log_path.read_text(errors="replace")[offset:].splitlines()
            done = [ln for ln in lines if "reload: the new code forwards" in ln]
            if done:
                return done[0]
            if any("reload refused" in ln for ln in lines) or host.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise LabError(f"h{host.index} did not reload:\n{self.log(host)[offset:][-3000:]}")

    def stop_vxland(self, host: Host, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the node and wait (how long it took is for the caller to judge); returns its
        exit status."""
        assert host.proc is not None
        host.proc.send_signal(sig)
        return host.proc.wait(timeout)

    def log(self, host: Host) -> str:
        return host.log_path.read_text(errors="replace") if host.log_path else ""

    def _program_kernel_node(self, host: Host) -> None:
        """flannel.<VNI> as flanneld >= 0.9 programs it (vxlan.plan: device.go, vxlan_network.go)."""
        mtu = self.mtu - wire.ENCAP_OVERHEAD
        steps = plan.vxlan_device(self.vni, self.port, host.vtep_mac, host.public_ip, "eth0", mtu, host._net())
        if self.kernel_tx_off:
            steps.append(plan.Step("tx off", ["ethtool", "-K", plan.device_name(self.vni), "tx", "off"]))
        for peer in self.hosts:
            if peer is not host and peer.registered:
                lease = Lease(peer._net(), peer.public_ip, "vxlan", peer.vtep_mac, self.vni)
                steps += plan.vxlan_peer(plan.device_name(self.vni), lease)
        for step in steps:
            sh(step.cmd, ns=host.ns)

    def etcd_tls_args(self) -> list[str]:
        if not (self.etcd and self.etcd[0].tls):
            return []
        d = self.workdir
        return ["--etcd-keyfile", str(d / "client.key"), "--etcd-certfile", str(d / "client.crt"),
                "--etcd-cafile", str(d / "ca.crt")]

    def add_outside(self, index: int = 200) -> tuple[str, str]:
        """A namespace on the underlay bridge that is no flannel node (the Internet, for
        --ip-masq tests): it has no route to the overlay. Returns (namespace, address); in a
        dual-stack lab it has the IPv6 underlay address UNDERLAY6 + ``index`` too."""
        ns, ip = f"{self.prefix}-out", str(UNDERLAY.network_address + index)
        self._add_ns(ns)
        sh(["ip", "-n", self.underlay_ns, "link", "add", "out", "type", "veth", "peer", "name", "eth0", "netns", ns])
        sh(["ip", "-n", self.underlay_ns, "link", "set", "out", "master", "br0", "up"])
        sh(["ip", "-n", ns, "addr", "add", f"{ip}/{UNDERLAY.prefixlen}", "dev", "eth0"])
        if self.ipv6:  # and an IPv6 address on the underlay (for IPv6 masquerade tests)
            sh(["ip", "-n", ns, "addr", "add", f"{UNDERLAY6.network_address + index}/{UNDERLAY6.prefixlen}", "dev",
                "eth0", "nodad"])
        sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
        return ns, ip

    # -- helpers for tests, demo and bench ------------------------------------------------
    def popen(self, ns: str, cmd: list[str], **kwargs) -> subprocess.Popen:
        """Start a process in ``ns`` that teardown ends (by PID) if the caller does not."""
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kwargs)
        self.processes.append(proc)
        return proc

    def ping(self, src: Host, dst: Host, count: int = 3, size: int = 56, interval: float = 0.2,
             dont_fragment: bool = False, timeout_s: int = 2, ipv6: bool = False) -> subprocess.CompletedProcess[str]:
        cmd = ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", str(timeout_s), "-s", str(size)]
        if dont_fragment:
            cmd += ["-M", "do"]
        target = ["-6", dst.pod_ip6] if ipv6 else [dst.pod_ip]
        return sh([*cmd, *target], ns=src.pod_ns, check=False, timeout=count * interval + timeout_s + 10)

    def iperf3(self, client: Host, server: Host, seconds: float, *args: str, ipv6: bool = False) -> dict:
        """iperf3 from ``client``'s pod to ``server``'s (``args``: more client flags; ``ipv6``:
        to its IPv6 address, in a dual-stack lab): its JSON report. The one-shot server is
        started here and retried until it listens."""
        address = server.pod_ip6 if ipv6 else server.pod_ip
        srv = self.popen(server.pod_ns, ["iperf3", "-s", "-1", "-B", address],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cmd = ["iperf3", "-c", address, "-t", str(seconds), "-J", *args]
        try:
            error = ""
            for _ in range(50):  # until the server listens
                proc = sh(cmd, ns=client.pod_ns, check=False, timeout=seconds + 30)
                try:
                    report = json.loads(proc.stdout)
                except ValueError:
                    report = {"error": (proc.stdout + proc.stderr).strip()[-300:]}
                error = report.get("error", "")
                if not error:
                    return report
                if "refused" not in error and "busy" not in error:
                    break
                time.sleep(0.1)
            raise LabError(f"iperf3 {client.pod_ip} -> {server.pod_ip} failed: {error or 'no result'}")
        finally:
            stop_process(srv)

    def http_get(self, host: Host, path: str) -> str:
        code = ("import sys, urllib.request; "
                "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())")
        return sh([sys.executable, "-c", code, f"http://127.0.0.1:{self.healthz_port}{path}"], ns=host.ns).stdout

    def metrics(self, host: Host) -> dict[str, float]:
        """``/metrics`` of a vxland host as ``{"name{labels}": value}``."""
        values = {}
        for line in self.http_get(host, "/metrics").splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values
