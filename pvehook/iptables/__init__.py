"""pvenat's rules on iptables (IPv4, the legacy backend PVE uses), behind rules.Backend.

render   the rules as data (the base, guests' chains, the port tree) and the difference
         as one iptables-restore --noflush script
parse    what the kernel has, read back from iptables-save: chains, jumps, claims
index    what pvenat last wrote, so that a hook need not read every rule back
kernel   iptables-save / iptables-restore, with retries
backend  rules.Backend's verbs on the four

Nothing outside this package imports it but rules.backend().
"""
