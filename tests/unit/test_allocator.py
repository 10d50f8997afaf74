"""flannel's subnet choice (tryAcquireLease) and subnet.env."""

from __future__ import annotations

import ipaddress
import random

import pytest

from vxlan import subnetenv
from vxlan.allocator import MAX_CANDIDATES, OutOfSubnets, choose_subnet, pick_free
from vxlan.config import parse_config
from vxlan.lease import Lease

CFG = parse_config({"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}})
N = ipaddress.IPv4Network


def lease(subnet, ip, mac=b"\x02" * 6):
    return Lease(N(subnet), ip, "vxlan", mac, 1)


def test_reuse_by_public_ip_first():
    mine = lease("10.5.7.0/24", "1.1.1.1", mac=b"\x02\x00\x00\x00\x00\x07")
    d = choose_subnet(CFG, [lease("10.5.1.0/24", "2.2.2.2"), mine], "1.1.1.1", N("10.5.9.0/24"), random.Random(1))
    assert d.subnet == N("10.5.7.0/24") and d.reuse == mine and d.delete_first == []


def test_incompatible_own_lease_is_deleted_then_previous_subnet():
    odd = lease("10.5.7.0/25", "1.1.1.1")  # wrong length for SubnetLen 24
    d = choose_subnet(CFG, [odd], "1.1.1.1", N("10.5.9.0/24"), random.Random(1))
    assert d.subnet == N("10.5.9.0/24") and d.reuse is None and d.delete_first == [odd]


def test_previous_subnet_only_if_free_and_compatible():
    taken = [lease("10.5.9.0/24", "2.2.2.2")]
    d = choose_subnet(CFG, taken, "1.1.1.1", N("10.5.9.0/24"), random.Random(1))
    assert d.subnet != N("10.5.9.0/24")
    d = choose_subnet(CFG, [], "1.1.1.1", N("10.6.9.0/24"), random.Random(1))  # outside Network
    assert d.subnet.subnet_of(CFG.network) and d.subnet != N("10.6.9.0/24")


def test_random_among_first_100_free():
    taken = [N(f"10.5.{i}.0/24") for i in range(1, 50)]
    picks = {pick_free(CFG, taken, random.Random(seed)) for seed in range(400)}
    firsts = {N(f"10.5.{i}.0/24") for i in range(50, 50 + MAX_CANDIDATES)}
    assert picks <= firsts and len(picks) > 60  # spread over the window, never beyond it
    assert N("10.5.0.0/24") not in picks  # SubnetMin skips the first subnet


def test_out_of_subnets():
    small = parse_config({"Network": "10.5.0.0/28", "SubnetLen": 30, "Backend": {"Type": "vxlan"}})
    taken = [N("10.5.0.4/30"), N("10.5.0.8/30"), N("10.5.0.12/30")]
    with pytest.raises(OutOfSubnets, match="out of subnets"):
        pick_free(small, taken, random.Random(0))


def test_overlapping_reservation_blocks_subnets():
    """A bigger reservation (e.g. a /22 put by hand) blocks every subnet it covers."""
    picks = {pick_free(CFG, [N("10.5.0.0/22")], random.Random(s)) for s in range(200)}
    assert all(int(p.network_address) >= int(N("10.5.4.0/24").network_address) for p in picks)


def test_subnet_env_format_and_readback(tmp_path):
    path = tmp_path / "run" / "flannel" / "subnet.env"
    subnetenv.write(path, N("10.5.0.0/16"), N("10.5.72.0/24"), 1450)
    assert path.read_text() == ("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\n"
                                "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert subnetenv.previous_subnet(path) == N("10.5.72.0/24")
    assert subnetenv.previous_subnet(tmp_path / "absent") is None
    path.write_text("FLANNEL_SUBNET=garbage\n")
    assert subnetenv.previous_subnet(path) is None
    assert list(path.parent.iterdir()) == [path]  # no temp files left
