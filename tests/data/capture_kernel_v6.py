"""How kernel-v6-vni1-port8472.pcap was made (run as root; needs a kernel with vxlan): two
kernel nodes of a dual-stack lab, programmed as flanneld v0.28.9 programs flannel.1 and
flannel-v6.1 (vxlan.lab.flanneld_emu), exchange IPv6 traffic pod to pod; node a's underlay
port is captured. The bytes are the kernel's; tx checksum offload is off on the nodes so that
inner checksums are complete on the veth underlay.

    python tests/data/capture_kernel_v6.py tests/data
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from vxlan import wire
from vxlan.lab import Lab, sh

PCAP = "kernel-v6-vni1-port8472.pcap"


def main(out: Path) -> None:
    with Lab(["kernel", "kernel"], registry="etcd", ipv6=True, kernel_tx_off=True) as lab:
        a, b = lab.hosts
        tmp = lab.workdir / PCAP
        cap = lab.popen(a.ns, ["tcpdump", "-i", "eth0", "-U", "-w", str(tmp), "ip6 and udp port 8472"],
                        stderr=subprocess.PIPE, text=True)
        assert cap.stderr is not None and "listening on" in cap.stderr.readline()
        time.sleep(0.5)
        assert lab.ping(a, b, count=1, ipv6=True).returncode == 0
        assert lab.ping(a, b, count=1, size=1430 - 48, dont_fragment=True, ipv6=True).returncode == 0
        sh(["python3", "-c", "import socket; s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); "
            f"s.sendto(b'x' * 10, ('{b.pod_ip6}', 9))"], ns=a.pod_ns)
        sh(["python3", "-c", "import socket\ntry: socket.create_connection"
            f"(('{b.pod_ip6}', 9), timeout=2)\nexcept OSError: pass"], ns=a.pod_ns)
        time.sleep(0.5)
        cap.terminate()
        cap.wait(5)
        (out / PCAP).write_bytes(tmp.read_bytes())

        def host(h) -> dict:
            lease = json.loads(lab.etcdctl("get", "--print-value-only",
                                           f"/coreos.com/network/subnets/{h.subnet.network_address}-24&"
                                           f"{h.subnet6.network_address}-64").stdout)
            return {"public_ip": h.public_ip, "public_ipv6": h.public_ipv6,
                    "vtep_mac": lease["BackendData"]["VtepMAC"], "vtep_mac_v6": lease["BackendV6Data"]["VtepMAC"],
                    "subnet": str(h.subnet), "subnet6": str(h.subnet6), "pod_ip": h.pod_ip, "pod_ip6": h.pod_ip6}

        meta = [{"file": PCAP, "vni": 1, "udp_port": wire.DEFAULT_PORT, "hosts": {"a": host(a), "b": host(b)}}]
        (out / "kernel-v6-frames.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
