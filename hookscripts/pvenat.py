#!/usr/bin/python3
"""pvenat guest hookscript. PVE runs it as ``pvenat.py VMID PHASE``.

Attach with: qm set VMID --hookscript local:snippets/pvenat.py (pct set for containers).
Same as ``pvenat hook VMID PHASE``, without loading the rest of the command line tool.
"""

import sys

from pvehook.hook import PHASES, main

if len(sys.argv) != 3 or not sys.argv[1].isdigit() or sys.argv[2] not in PHASES:
    sys.exit(f"usage: {sys.argv[0]} VMID {{{','.join(PHASES)}}}")
sys.exit(main(int(sys.argv[1]), sys.argv[2]))
