#!/usr/bin/python3
"""pvenat guest hookscript. PVE runs it as ``pvenat.py VMID PHASE``.

Attach with: qm set VMID --hookscript local:snippets/pvenat.py (pct set for containers).
"""

import sys

from pvehook.cli import main

sys.exit(main(["hook", *sys.argv[1:]]))
