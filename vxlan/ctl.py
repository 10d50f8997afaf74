"""``python -m vxlan.ctl`` runs ``vxlanctl``."""

import sys

from vxlan.cli import vxlanctl_main

if __name__ == "__main__":
    sys.exit(vxlanctl_main())
