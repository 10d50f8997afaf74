"""``python -m vxlan`` runs the daemon (same as the ``vxland`` script)."""

import sys

from vxlan.cli import vxland_main

sys.exit(vxland_main())
