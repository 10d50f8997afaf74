"""pyroute2's IPRoute without the rest of pyroute2.

``import pyroute2`` runs a package ``__init__`` that imports every part of the library (NDB,
IPDB, conntrack, ipset, ipvs, nl80211, wireguard, plan9 ...): 12 MB of a node's memory, where
vxland needs the rtnetlink socket alone (5 MB). When nothing has imported pyroute2 yet, its
``iproute.linux`` module is loaded under a bare package module; the top-level names vxland
uses are set on it, so a later ``from pyroute2 import IPRoute`` still works. If that fails
(another pyroute2 layout), the package is imported as usual.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types


def _load() -> tuple[type, type[Exception]]:
    if "pyroute2" not in sys.modules:
        spec = importlib.util.find_spec("pyroute2")
        if spec is not None and spec.submodule_search_locations:
            bare = types.ModuleType("pyroute2")
            bare.__path__ = list(spec.submodule_search_locations)
            bare.__spec__ = spec
            bare.__file__ = spec.origin
            sys.modules["pyroute2"] = bare
            try:
                iproute = importlib.import_module("pyroute2.iproute.linux")
                exceptions = importlib.import_module("pyroute2.netlink.exceptions")
                bare.IPRoute = iproute.IPRoute  # type: ignore[attr-defined]
                bare.NetlinkError = exceptions.NetlinkError  # type: ignore[attr-defined]
                return iproute.IPRoute, exceptions.NetlinkError
            except Exception:  # another layout: forget the bare package, import the real one
                for name in [n for n in sys.modules if n == "pyroute2" or n.startswith("pyroute2.")]:
                    del sys.modules[name]
    import pyroute2
    from pyroute2.netlink.exceptions import NetlinkError as error

    return pyroute2.IPRoute, error


IPRoute, NetlinkError = _load()
