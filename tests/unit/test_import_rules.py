"""The import rules of docs/architecture.md, read from the source (ast) and from a daemon's
running import graph. An arrow the wrong way fails here, naming the module and the import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "vxlan"

# The pure core: no I/O, no root, nothing above it. (vxlan.plan is pure itself but takes its
# rules from vxlan.iptables and vxlan.subnetenv, which also run them: not in the core until
# those are split.)
PURE = {"vxlan.wire", "vxlan.codec", "vxlan.config", "vxlan.lease", "vxlan.allocator", "vxlan.peers"}
PURE_MAY_IMPORT = PURE | {"vxlan"}
# What the data plane is: registries never reach into it.
DATA_PLANE = {"fastpath", "vxlan.dataplane", "vxlan.tun", "vxlan.tunnel_tx", "vxlan.capture", "vxlan.udpbackend",
              "vxlan.netconf", "vxlan.daemon"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Project modules (vxlan.*, fastpath*) that ``path`` imports, at any level of the file."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}: relative import (the project imports absolutely)"
            base = node.module or ""
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in ("vxlan", "fastpath")}
    return found


def project_modules() -> dict[str, set[str]]:
    modules = {}
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "fastpath").glob("*.py")]:
        name = module_name(path)
        known = set()
        for imported in imports_of(path):
            # "from vxlan import wire" names vxlan.wire; keep what is a module of ours
            candidate = ROOT / Path(*imported.split("."))
            if candidate.with_suffix(".py").exists() or (candidate / "__init__.py").exists():
                known.add(imported)
        modules[name] = known
    return modules


def test_the_pure_core_imports_only_the_pure_core():
    bad = {name: sorted(imp - PURE_MAY_IMPORT) for name, imp in project_modules().items()
           if name in PURE and imp - PURE_MAY_IMPORT}
    assert not bad, f"pure modules importing more than the pure core: {bad}"


def test_fastpath_imports_only_wire():
    bad = {name: sorted(imp - {"vxlan", "vxlan.wire", "fastpath", "fastpath._fastpath"})
           for name, imp in project_modules().items() if name.startswith("fastpath")}
    assert not any(bad.values()), bad


def test_registries_never_import_the_data_plane():
    bad = {name: sorted(imp & DATA_PLANE) for name, imp in project_modules().items()
           if name.startswith("vxlan.registry") and imp & DATA_PLANE}
    assert not bad, bad


def test_only_the_lab_and_its_commands_import_the_lab():
    """The lab (namespaces, its etcd, the flanneld emulator, the demo) is a wing of its own."""
    allowed = {"vxlan.cli"}  # `vxlanctl demo` and `vxlanctl lab`, lazily
    bad = {name: sorted(i for i in imp if i == "vxlan.lab" or i.startswith("vxlan.lab."))
           for name, imp in project_modules().items()
           if not (name == "vxlan.lab" or name.startswith("vxlan.lab.")) and name not in allowed}
    assert not any(bad.values()), {k: v for k, v in bad.items() if v}


def test_only_cli_parses_arguments():
    users = [module_name(p) for p in PACKAGE.rglob("*.py")
             if "argparse" in {a.name for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.Import)
                               for a in n.names}]
    assert set(users) <= {"vxlan.cli", "vxlan.lab.flanneld_emu"}, users  # the emulator is flanneld's stand-in


def test_a_running_daemons_import_graph_has_no_lab_and_no_bench():
    code = ("import sys, vxlan.daemon, vxlan.cli, vxlan.registry.select, vxlan.registry.etcd_v2, "
            "vxlan.registry.etcd_client; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith(('vxlan.lab', 'bench', 'aiohttp', "
            "'scapy', 'hypothesis', 'matplotlib')))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"loaded by the daemon: {out.stdout}"


def test_the_product_ships_no_bench_and_no_bench_build():
    """pyproject's packages and package data: no bench module, no engine built without its
    capture hook (bench builds that in place when it needs it)."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert not [p for p in setuptools["packages"] if p.split(".")[0] in ("bench", "tests")]
    assert "_fastpath_nocapture.*" in setuptools["exclude-package-data"]["fastpath"]
    assert 'os.environ.get("VXLAN_BUILD_NOCAPTURE") == "1"' in (ROOT / "setup.py").read_text()
