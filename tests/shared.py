"""What the unit tests and the lab share: the guests of the flow matrix and the fake API's
token."""

import os

FAKEPVE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fakepve")
# What is downloaded once and kept (the Makefile's PVENAT_CACHE): Debian roots, the lab's
# ifupdown2, apt's .debs for the fresh roots.
CACHE = os.environ.get("PVENAT_CACHE") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache")
TOKEN = "pvenat@pve!hook=5e1c3a0e-7d2b-4c8e-9f00-1a2b3c4d5e6f"


NOTES_101 = """Web server, managed by pvenat.

```pvenat
forwards:
  - 10000-10099              # TCP, same ports
  - 12222:22                 # public 12222 -> guest 22
  - 10000-10099/udp
  - 18000-18009:9000-9009    # a range remapped
  - ports: 13389:3389
    proto: both
    allow: [198.51.100.0/24, 192.0.2.7]
```
"""


def flow_guests():
    return {
        101: {"kind": "qemu", "address": "172.22.161.170", "config": {
            "description": NOTES_101, "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr1",
            "ipconfig0": "ip=172.22.161.170/24,gw=172.22.161.254"},
            "serve": ["tcp:22", "tcp:10000", "tcp:10099", "udp:10000", "tcp:9005",
                      "tcp:3389", "udp:3389", "tcp:80"]},
        102: {"kind": "lxc", "address": "172.22.161.171", "config": {
            "tags": "prod;pvenat-11000", "net0": "name=eth0,bridge=vmbr1,"
            "hwaddr=BC:24:11:00:00:02,ip=172.22.161.171/24,gw=172.22.161.254,type=veth"},
            "serve": ["tcp:11000", "udp:11000"]},
        103: {"kind": "qemu", "config": {"description": "```pvenat\nforwards: [2222:22]\n```",
                                         "net0": "virtio=X,bridge=vmbr1", "ipconfig0":
                                         "ip=172.22.161.173/24"}},
        104: {"kind": "lxc", "config": {"tags": "pvenat-11000",
                                        "net0": "name=eth0,bridge=vmbr1,ip=172.22.161.174/24"}},
        105: {"kind": "qemu", "config": {"description":
                                         "```pvenat\nip: 172.22.161.170\nforwards: [20000]\n```"}},
        106: {"kind": "qemu", "node": "pve2", "config": {"tags": "pvenat-20000",
                                                         "net0": "virtio=X,bridge=vmbr1",
                                                         "ipconfig0": "ip=172.22.161.176/24"}},
        107: {"kind": "qemu", "config": {"description": "no pvenat here", "tags": "web"}},
    }
