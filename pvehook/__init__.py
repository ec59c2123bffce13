"""pvenat: port forwards and NAT for Proxmox VE guests behind one public IPv4."""

__version__ = "0.1.0"
