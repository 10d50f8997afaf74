"""vxland's command line: bad input gives the exact field and reason and a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def vxland(*args, env=None):
    return subprocess.run([sys.executable, "-m", "vxlan", *args], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **(env or {})})


def test_invalid_registry_names_field_and_exits_1(tmp_path):
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"config": {"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}},
                                "subnets": {"10.5.1.0-24": {"PublicIP": "10.0.0.1", "BackendType": "vxlan",
                                                            "BackendData": {"VtepMAC": "nope"}}}}))
    proc = vxland("--registry-file", str(path))
    assert proc.returncode == 1
    assert 'subnets["10.5.1.0-24"].BackendData.VtepMAC' in proc.stderr
    assert "'nope' is not a MAC address" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_dual_stack_config_on_another_backend_is_refused_by_name(tmp_path):
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"config": {"Network": "10.5.0.0/16", "Backend": {"Type": "host-gw"},
                                           "EnableIPv6": True, "IPv6Network": "fc00::/48"}, "subnets": {}}))
    proc = vxland("--registry-file", str(path))
    assert proc.returncode == 1, proc.stderr
    assert "EnableIPv6: IPv6 overlays are carried by vxland's vxlan backend only, not by host-gw" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_says_whether_vxland_would_start(tmp_path):
    """--check (what a reload runs first): the flags, the data plane's code and the network
    config, and nothing touched; 0 if vxland would start, 1 with the reason if not."""
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"config": {"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}, "subnets": {}}))
    proc = vxland("--check", "--registry-file", str(path))
    assert proc.returncode == 0 and "check: ok (data plane" in proc.stderr, proc.stderr
    path.write_text('{"config": ')
    proc = vxland("--check", "--registry-file", str(path))
    assert proc.returncode == 1 and "check: invalid network config" in proc.stderr and "not JSON" in proc.stderr
    proc = vxland("--check", "--registry-file", str(path), "--outer-source-ports", "0")
    assert proc.returncode == 2 and "--outer-source-ports 0" in proc.stderr


def test_a_bad_public_ipv6_is_refused_by_name():
    for bad, text in (("fd00::zz", "is not an IPv6 address"), ("ff02::1", "is not a VTEP address")):
        proc = vxland("--public-ipv6", bad, "--registry-file", "/nonexistent")
        assert proc.returncode == 2 and "--public-ipv6" in proc.stderr and text in proc.stderr, proc.stderr


def test_missing_registry_file(tmp_path):
    proc = vxland("--registry-file", str(tmp_path / "absent.json"))
    assert proc.returncode == 1 and "cannot read: No such file or directory" in proc.stderr


@pytest.mark.parametrize("args,rc,text", [
    (["--etcd-endpoints", "ftp://x:1"], 2, "is not an etcd endpoint"),
    (["--etcd-endpoints", "http://127.0.0.1:99999"], 2, "invalid port"),
    (["--etcd-username", "root"], 2, "--etcd-username and --etcd-password go together"),
    (["--etcd-keyfile", "/nonexistent/k", "--etcd-certfile", "/nonexistent/c"], 2, "not readable"),
    (["--subnet-lease-renew-margin", "1440"], 1, "subnet-lease-renew-margin option, out of acceptable range"),
    (["--subnet-lease-renew-margin", "0"], 1, "out of acceptable range"),
])
def test_bad_etcd_flags(args, rc, text):
    proc = vxland(*args)
    assert proc.returncode == rc and text in proc.stderr, proc.stderr


@pytest.mark.parametrize("args,text", [
    (["--public-ip", "300.1.1.1"], "is not an IPv4 address"),
    (["--healthz-port", "99999"], "out of range"),
    (["--bogus"], "unrecognized arguments"),
    (["--engine-nice", "-21"], "--engine-nice -21: must be -20..19"),
    (["--engine-nice", "x"], "invalid int value"),
    (["--outer-source-ports", "0"], "--outer-source-ports 0: must be 1..32"),
    (["--outer-source-ports", "33"], "--outer-source-ports 33: must be 1..32"),
    (["--underlay-rx", "raw"], "--underlay-rx"),
    (["--tunnel-gso", "on"], "--tunnel-gso"),
    (["--engine-sched", "fifo"], "--engine-sched"),
])
def test_bad_flags(args, text):
    proc = vxland(*args)
    assert proc.returncode == 2 and text in proc.stderr


def test_flags_from_flanneld_env(tmp_path):
    """FLANNELD_<FLAG> works like the flag (coreos/pkg flagutil.SetFlagsFromEnv)."""
    proc = vxland(env={"FLANNELD_REGISTRY_FILE": str(tmp_path / "absent.json")})
    assert proc.returncode == 1 and "absent.json" in proc.stderr
    proc = vxland(env={"FLANNELD_PUBLIC_IP": "nonsense"})
    assert proc.returncode == 2 and "nonsense" in proc.stderr


def test_vxlanctl_check(tmp_path):
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"config": {"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan", "VNI": 42}},
                                "subnets": {"10.5.1.0-24": {"PublicIP": "10.0.0.1", "BackendType": "vxlan",
                                                            "BackendData": {"VtepMAC": "02:00:00:00:00:01"}}}}))
    proc = subprocess.run([sys.executable, "-m", "vxlan.ctl", "check", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0 and "VNI 42, port 8472" in proc.stdout and "02:00:00:00:00:01" in proc.stdout


def test_pure_python_fallback_is_logged():
    code = "import fastpath; print(fastpath.IMPLEMENTATION, fastpath.Codec.__module__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "VXLAN_PURE_PYTHON": "1"})
    assert proc.stdout.split() == ["python", "vxlan.wire"]
    assert "VXLAN_PURE_PYTHON is set" in proc.stderr
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "VXLAN_PURE_PYTHON"})
    assert proc.stdout.split() == ["cython", "fastpath._fastpath"]


# -- flanneld flag parity -------------------------------------------------------------------

FLANNELD_FLAGS = ["etcd-endpoints", "etcd-prefix", "etcd-keyfile", "etcd-certfile", "etcd-cafile", "etcd-username",
                  "etcd-password", "iface", "iface-regex", "iface-can-reach", "public-ip", "public-ipv6",
                  "subnet-file", "subnet-lease-renew-margin", "ip-masq", "ip-masq-fully-random-disable",
                  "iptables-resync", "iptables-forward-rules", "ip-blackhole-route", "healthz-ip", "healthz-port",
                  "kube-subnet-mgr", "kube-api-url", "kubeconfig-file", "kube-annotation-prefix", "net-config-path",
                  "set-node-network-unavailable", "v", "vmodule", "log_backtrace_at", "version"]


def parse(*argv, env=None):
    from vxlan import cli

    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        parser = cli.vxland_parser()
        return parser.parse_args(cli.go_style_argv(parser, list(argv)))
    finally:
        os.environ.clear()
        os.environ.update(old)


def test_every_flanneld_flag_is_accepted():
    from vxlan import cli

    parser = cli.vxland_parser()
    known = {opt.lstrip("-") for action in parser._actions for opt in action.option_strings}
    assert set(FLANNELD_FLAGS) <= known, set(FLANNELD_FLAGS) - known


def test_flanneld_defaults():
    a = parse()
    assert (a.etcd_endpoints, a.etcd_prefix, str(a.subnet_file)) == (
        "http://127.0.0.1:4001,http://127.0.0.1:2379", "/coreos.com/network", "/run/flannel/subnet.env")
    assert (a.ip_masq, a.ip_masq_fully_random_disable, a.iptables_resync, a.iptables_forward_rules,
            a.ip_blackhole_route, a.healthz_ip, a.healthz_port, a.subnet_lease_renew_margin) == (
        False, False, 5, True, False, "0.0.0.0", 0, 60)


def test_go_style_flags_and_booleans():
    """Go's flag package: -name and --name, -name=value, bools as -name, -name=true/false/1/0/t/f."""
    a = parse("-etcd-endpoints=http://10.0.0.1:2379", "-iface", "eth0", "--iface=ens33", "-ip-masq",
              "--iptables-forward-rules=false", "-ip-blackhole-route=1", "-v=2", "--iptables-resync", "9")
    assert a.etcd_endpoints == "http://10.0.0.1:2379" and a.iface == ["eth0", "ens33"]
    assert (a.ip_masq, a.iptables_forward_rules, a.ip_blackhole_route, a.verbosity, a.iptables_resync) == (
        True, False, True, 2, 9)


def test_env_vars_including_repeatable_and_bool():
    a = parse(env={"FLANNELD_IFACE": "eth1,eth2", "FLANNELD_IP_MASQ": "true", "FLANNELD_IPTABLES_FORWARD_RULES": "0",
                   "FLANNELD_IPTABLES_RESYNC": "7"})
    assert (a.iface, a.ip_masq, a.iptables_forward_rules, a.iptables_resync) == (["eth1", "eth2"], True, False, 7)
    assert parse("--ip-masq=false", env={"FLANNELD_IP_MASQ": "true"}).ip_masq is False  # the command line wins


@pytest.mark.parametrize("args,text", [
    (["--kube-subnet-mgr"], "--kube-subnet-mgr: not supported"),
    (["-kube-subnet-mgr=true", "--kubeconfig-file=/k"], "--kube-subnet-mgr, --kubeconfig-file: not supported"),
    (["--net-config-path", "/etc/x.json"], "--net-config-path: not supported"),
])
def test_kubernetes_flags_are_refused_clearly(args, text):
    proc = vxland(*args)
    assert proc.returncode == 2 and text in proc.stderr and "Kubernetes subnet manager" in proc.stderr, proc.stderr


@pytest.mark.parametrize("args,text", [
    (["--ip-masq=maybe"], "is not a boolean"),
    (["--iptables-resync", "0"], "must be 1 or more"),
    (["--iface-regex", "(unclosed"], "--iface-regex"),
])
def test_bad_parity_flags(args, text):
    proc = vxland(*args)
    assert proc.returncode == 2 and text in proc.stderr, proc.stderr


def test_version_and_grouped_help():
    proc = vxland("-version")
    assert proc.returncode == 0 and proc.stdout.startswith("vxland ")
    help_text = vxland("--help").stdout
    groups = ["flanneld flags: etcd", "flanneld flags: this node", "flanneld flags: iptables and routes",
              "flanneld flags: health and logging", "vxland flags"]
    positions = [help_text.index(g) for g in groups]
    assert positions == sorted(positions)
    assert "not support" in help_text


def test_kube_flags_at_their_defaults_are_no_error():
    from vxlan import cli

    assert cli.kube_flags_used(parse("--kube-subnet-mgr=false", "--set-node-network-unavailable=true")) == []


@pytest.mark.parametrize("env,text", [
    ({"FLANNELD_HEALTHZ_PORT": "\x01"}, "argument --healthz-port: '\\x01' is not a port number"),
    ({"FLANNELD_ENGINE_NICE": "abc"}, "argument --engine-nice: invalid int value: 'abc'"),
    ({"FLANNELD_IP_MASQ": "maybe"}, "argument --ip-masq: 'maybe' is not a boolean"),
    ({"FLANNELD_ETCD_API": "v4"}, "argument --etcd-api: 'v4': must be one of auto, v3, v2"),
])
def test_bad_flag_values_from_the_environment(env, text):
    """Found by the fuzz targets: these ended vxland with a traceback while its flags were set up."""
    proc = subprocess.run([sys.executable, "-m", "vxlan", "--registry-file", "/nonexistent"],
                          capture_output=True, text=True, env={**os.environ, **env}, timeout=30)
    assert proc.returncode == 2 and text in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
