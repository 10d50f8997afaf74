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
