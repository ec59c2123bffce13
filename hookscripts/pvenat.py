#!/usr/bin/python3
"""pvenat guest hookscript. PVE runs it as ``pvenat.py VMID PHASE``.

Attach with: pvenat attach VMID (or qm set VMID --hookscript local:snippets/pvenat.py, pct set
for containers). Same as ``pvenat hook VMID PHASE``, without loading the rest of the
command line tool.
"""

import sys

try:
    from pvehook.hook import PHASES, main
except ImportError:
    # The package is gone while a guest still names this script: PVE refuses to start a
    # guest whose pre-start hook fails, so let it start, without forwards, and say so.
    vmid = sys.argv[1] if len(sys.argv) > 1 else "?"
    print(f"pvenat: not installed; guest {vmid} runs without its forwards (remove "
          "'hookscript' from its options, or install pvenat)", flush=True)
    sys.exit(0)

if len(sys.argv) != 3 or not sys.argv[1].isdigit() or sys.argv[2] not in PHASES:
    sys.exit(f"usage: {sys.argv[0]} VMID {{{','.join(PHASES)}}}")
sys.exit(main(int(sys.argv[1]), sys.argv[2]))
