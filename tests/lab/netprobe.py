"""Traffic for the namespace lab: tiny TCP/UDP responders and one-shot clients.

serve NAME PROTO:PORT ...   answer every TCP connection or UDP datagram with
                            "NAME SOURCE-IP" (who was reached, and whom it saw)
serve6 NAME PROTO:PORT ...  the same on IPv6 (a socket of its own, beside serve's)
tcp|udp HOST PORT [SRC]     connect or send once, over IPv4 or IPv6 as HOST is; print the
                            answer, "refused" or "timeout"
dns-serve [@ADDR] NAME=IP ...  a DNS server on UDP 53 (of ADDR, else every address) that
                            knows these A records, nothing else
resolve SERVER NAME         ask SERVER for NAME's A record; print the address, "nxdomain"
                            or "timeout"
"""

import selectors
import socket
import struct
import sys

TIMEOUT = 1.5
# IPv6: a first packet may wait for a proxy neighbour answer, which the kernel delays by
# up to proxy_delay (0.8 s) to let a real owner answer first
TIMEOUT6 = 3


def serve(name, specs, family=socket.AF_INET):
    sel = selectors.DefaultSelector()
    for spec in specs:
        proto, port = spec.split(":")
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        s = socket.socket(family, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", int(port)))
        if proto == "tcp":
            s.listen(64)
        sel.register(s, selectors.EVENT_READ, proto)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            if key.data == "tcp":
                conn, peer = s.accept()
                with conn:
                    conn.sendall(f"{name} {peer[0]}\n".encode())
            else:
                _, peer = s.recvfrom(2048)
                s.sendto(f"{name} {peer[0]}\n".encode(), peer)


def client(proto, host, port, src=None):
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    six = ":" in host
    with socket.socket(socket.AF_INET6 if six else socket.AF_INET, kind) as s:
        s.settimeout(TIMEOUT6 if six else TIMEOUT)
        if src:
            s.bind((src, 0))
        try:
            if proto == "tcp":
                s.connect((host, int(port)))
                data = s.recv(256)
            else:
                s.sendto(b"ping", (host, int(port)))
                data = s.recv(256)
        except ConnectionRefusedError:
            return "refused"
        except (socket.timeout, TimeoutError):
            return "timeout"
        except OSError as e:
            return f"error {e.strerror}"
    return data.decode().strip() or "empty"


def _qname(data: bytes, at: int) -> tuple[str, int]:
    labels = []
    while data[at]:
        labels.append(data[at + 1:at + 1 + data[at]].decode())
        at += 1 + data[at]
    return ".".join(labels).lower(), at + 1


def dns_serve(records):
    address = records.pop(0)[1:] if records and records[0].startswith("@") else "0.0.0.0"
    known = dict(r.split("=") for r in records)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((address, 53))
    print("ready", flush=True)
    while True:
        query, peer = s.recvfrom(512)
        name, end = _qname(query, 12)
        question = query[12:end + 4]
        ip = known.get(name)
        flags = 0x8180 if ip else 0x8183  # a response, recursion available; NXDOMAIN
        answer = (b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(ip)
                  if ip else b"")
        s.sendto(query[:2] + struct.pack("!HHHHH", flags, 1, 1 if ip else 0, 0, 0)
                 + question + answer, peer)


def resolve(server, name):
    query = struct.pack("!HHHHHH", 0x5a5a, 0x0100, 1, 0, 0, 0) + b"".join(
        bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0" + \
        struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.sendto(query, (server, 53))
        try:
            reply = s.recv(512)
        except (socket.timeout, TimeoutError):
            return "timeout"
    if reply[3] & 0x0F == 3:
        return "nxdomain"
    answers = struct.unpack("!H", reply[6:8])[0]
    at = _qname(reply, 12)[1] + 4
    for _ in range(answers):
        at += 2 if reply[at] & 0xC0 else _qname(reply, at)[1] - at
        kind, _, _, length = struct.unpack("!HHIH", reply[at:at + 10])
        if kind == 1:
            return socket.inet_ntoa(reply[at + 10:at + 14])
        at += 10 + length
    return "no address"


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3:])
    elif sys.argv[1] == "serve6":
        serve(sys.argv[2], sys.argv[3:], socket.AF_INET6)
    elif sys.argv[1] == "dns-serve":
        dns_serve(sys.argv[2:])
    elif sys.argv[1] == "resolve":
        print(resolve(*sys.argv[2:]))
    else:
        print(client(*sys.argv[1:]))
