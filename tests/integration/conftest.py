"""Integration tier: real namespaces, real TUN devices, real kernel vxlan peers. Needs root."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.integration.helpers import LocalEtcd
from vxlan import lab as labmod

# make test runs this tier on two workers side by side. The daemons' engine threads run at
# nice -10 by default (--engine-nice): one test's bulk transfer would then starve the other
# worker's processes on two cores (a daemon took over 5 s to handle SIGTERM, with SCHED_BATCH).
# Here they run at nice 0; their scheduling is measured by bench/, which runs alone, with the default.
os.environ.setdefault("FLANNELD_ENGINE_NICE", "0")


def pytest_collection_modifyitems(config, items):
    reason = labmod.can_run()
    for item in items:
        item.add_marker(pytest.mark.root)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def kernel_vxlan():
    """Skip (with the kernel's reason) tests that need a kernel vxlan peer."""
    missing = labmod.kernel_vxlan_missing()
    if missing:
        pytest.skip(missing)


@pytest.fixture(scope="session", autouse=True)
def no_leftovers():
    """Clean namespaces of crashed earlier runs first; after the session, none of ours remain."""
    if labmod.can_run() is None:
        labmod.clean_stale()
    yield
    if labmod.can_run() is None:
        out = labmod.sh(["ip", "netns", "list"], check=False).stdout
        mine = [line for line in out.splitlines() if line.startswith(f"vxl-{labmod.os.getpid()}-")]
        assert not mine, f"namespaces left behind: {mine}"


@pytest.fixture
def local_etcd():
    """A real etcd on loopback serving both the v3 and the v2 API (control-plane tests need no
    namespaces)."""
    workdir = Path(tempfile.mkdtemp(prefix="vxlan-etcd-"))
    etcd = LocalEtcd(workdir)
    try:
        yield etcd
    finally:
        etcd.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(params=["v3", "v2"])
def api(request) -> str:
    """The etcd store a test runs against: where v2 and v3 behave the same, tests run on both."""
    return request.param
