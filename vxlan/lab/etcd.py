"""The etcd part of the lab: members in the underlay namespace, etcdctl, the seed config.

A mixin of ``vxlan.lab.Lab`` (kept apart so that the topology code stays readable). Members
listen on 198.18.0.251+ on the underlay bridge and start with fast timings for one
machine (heartbeat 10 ms, election 100 ms: a lost leader is replaced within a second).
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from vxlan.lab.util import LabError, sh, stop_process


@dataclass
class EtcdMember:
    index: int
    ip: str
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    tls: bool = False  # https with client certificates (certs in the lab's workdir)
    ip6: str | None = None  # dual-stack labs: clients may come over the IPv6 underlay too

    @property
    def name(self) -> str:
        return f"m{self.index}"

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.ip}:2379"

    @property
    def client_url6(self) -> str | None:
        return f"{'https' if self.tls else 'http'}://[{self.ip6}]:2379" if self.ip6 else None

    @property
    def peer_url(self) -> str:
        return f"http://{self.ip}:2380"


def make_certs(d: Path, ips: list[str]) -> None:
    """A CA, a server certificate for ``ips`` and a client certificate (openssl), in ``d``."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
        "-subj", "/CN=vxland-lab-ca")
    sans = ",".join(f"IP:{ip}" for ip in ips)
    (d / "san.ext").write_text(f"subjectAltName={sans}\nextendedKeyUsage=serverAuth,clientAuth\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "1", "-extfile", "san.ext")


CONFIG_KEY = "/coreos.com/network/config"
SUBNETS = "/coreos.com/network/subnets"


class EtcdLabMixin:
    """Needs from the Lab: ``etcd`` (members), ``etcd_api``, ``prefix``, ``underlay_ns``, ``popen``,
    ``workdir``, ``backend``, ``backend_config()``, ``network``, ``network6``, ``subnet_len``."""

    @property
    def etcd_endpoints(self) -> str:
        return ",".join(m.client_url for m in self.etcd)

    @property
    def etcd_endpoints6(self) -> str:
        """The members' client URLs over the IPv6 underlay (dual-stack labs)."""
        return ",".join(m.client_url6 for m in self.etcd if m.client_url6)

    def start_etcd(self, member: EtcdMember, wait: bool = True) -> None:
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.etcd)
        cmd = ["etcd", "--name", member.name, "--data-dir", str(member.data_dir),
               "--listen-client-urls", ",".join(filter(None, (member.client_url, member.client_url6))),
               "--advertise-client-urls", member.client_url,
               "--listen-peer-urls", member.peer_url, "--initial-advertise-peer-urls", member.peer_url,
               "--initial-cluster", cluster, "--initial-cluster-token", self.prefix,
               "--initial-cluster-state", "new", "--heartbeat-interval", "10", "--election-timeout", "100"]
        if member.tls:
            d = self.workdir
            cmd += ["--cert-file", str(d / "server.crt"), "--key-file", str(d / "server.key"),
                    "--trusted-ca-file", str(d / "ca.crt"), "--client-cert-auth"]
        if self.etcd_api == "v2":
            cmd.append("--enable-v2=true")  # etcd >= 3.4 serves the v2 API only when asked
        with open(member.log_path, "ab") as log:
            member.proc = self.popen(self.underlay_ns, cmd, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        if wait:
            self._wait_etcd(member)

    def _wait_etcd(self, member: EtcdMember, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if member.proc is not None and member.proc.poll() is not None:
                break
            if self.etcdctl("endpoint", "health", endpoints=member.client_url, check=False).returncode == 0:
                return
            time.sleep(0.1)
        tail = member.log_path.read_text(errors="replace")[-2000:] if member.log_path.exists() else ""
        raise LabError(f"etcd member {member.name} did not become healthy:\n{tail}")

    def stop_etcd(self, member: EtcdMember) -> None:
        if member.proc is not None:
            stop_process(member.proc)
            member.proc = None

    def etcdctl(self, *args: str, endpoints: str | None = None, check: bool = True,
                input: str | None = None, api: str = "v3") -> subprocess.CompletedProcess[str]:
        """etcdctl in the underlay namespace, speaking ``api`` (v2: ``set``, ``rm``, ``ls`` ...)."""
        tls = []
        if self.etcd and self.etcd[0].tls:
            d = self.workdir
            names = ("--cacert", "--cert", "--key") if api == "v3" else ("--ca-file", "--cert-file", "--key-file")
            tls = [names[0], str(d / "ca.crt"), names[1], str(d / "client.crt"), names[2], str(d / "client.key")]
        timeout = ["--command-timeout=5s"] if api == "v3" else ["--total-timeout=5s"]
        env_cmd = ["env", f"ETCDCTL_API={api[1]}", "etcdctl", "--endpoints", endpoints or self.etcd_endpoints,
                   *timeout, *tls, *args]
        return sh(env_cmd, ns=self.underlay_ns, check=check, input=input)

    def default_config(self) -> dict:
        config: dict = {"Network": str(self.network)} if not self.ipv6_only else {"EnableIPv4": False}
        if self.backend.get("Type", "vxlan") is not None:  # Type None: no Backend at all (udp)
            config["Backend"] = self.backend_config()
        if self.subnet_len != 24 and not self.ipv6_only:
            config["SubnetLen"] = self.subnet_len
        if self.network6 is not None:
            config.update({"EnableIPv6": True, "IPv6Network": str(self.network6)})
        return config

    def put_config(self, config: dict | str | None = None, api: str | None = None) -> None:
        """Write the network config as an operator would, in the lab's store (or ``api``'s);
        a str is written as it is."""
        api = api or self.etcd_api
        value = config if isinstance(config, str) else json.dumps(config or self.default_config())
        if api == "v2":
            self.etcdctl("set", CONFIG_KEY, value, api="v2")
        else:
            self.etcdctl("put", CONFIG_KEY, value)

    def delete_config(self, api: str | None = None) -> None:
        api = api or self.etcd_api
        self.etcdctl(*(("rm", CONFIG_KEY) if api == "v2" else ("del", CONFIG_KEY)), api=api)

    def put_lease(self, key: str, value: str, api: str | None = None, **kw) -> None:
        """Write ``<prefix>/subnets/<key>`` (no TTL) as etcdctl would."""
        api = api or self.etcd_api
        self.etcdctl("set" if api == "v2" else "put", f"{SUBNETS}/{key}", value, api=api, **kw)

    def delete_lease(self, key: str, api: str | None = None) -> None:
        api = api or self.etcd_api
        self.etcdctl("rm" if api == "v2" else "del", f"{SUBNETS}/{key}", api=api)

    def etcd_leases(self, api: str | None = None) -> dict[str, dict]:
        """key -> lease JSON of everything under /coreos.com/network/subnets."""
        if (api or self.etcd_api) == "v2":
            keys = self.etcdctl("ls", SUBNETS, api="v2", check=False).stdout.split()
            return {key: json.loads(self.etcdctl("get", key, api="v2").stdout) for key in keys}
        out = self.etcdctl("get", "--prefix", f"{SUBNETS}/").stdout.splitlines()
        return {out[i]: json.loads(out[i + 1]) for i in range(0, len(out) - 1, 2)}
