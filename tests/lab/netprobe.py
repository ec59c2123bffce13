"""Traffic for the namespace lab: tiny TCP/UDP responders and one-shot clients.

serve NAME PROTO:PORT ...   answer every TCP connection or UDP datagram with
                            "NAME SOURCE-IP" (who was reached, and whom it saw)
tcp|udp HOST PORT [SRC]     connect or send once; print the answer, "refused" or "timeout"
"""

import selectors
import socket
import sys

TIMEOUT = 1.5


def serve(name, specs):
    sel = selectors.DefaultSelector()
    for spec in specs:
        proto, port = spec.split(":")
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        s = socket.socket(socket.AF_INET, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", int(port)))
        if proto == "tcp":
            s.listen(64)
        sel.register(s, selectors.EVENT_READ, proto)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            if key.data == "tcp":
                conn, (ip, _) = s.accept()
                with conn:
                    conn.sendall(f"{name} {ip}\n".encode())
            else:
                _, (ip, port) = s.recvfrom(2048)
                s.sendto(f"{name} {ip}\n".encode(), (ip, port))


def client(proto, host, port, src=None):
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.settimeout(TIMEOUT)
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


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3:])
    else:
        print(client(*sys.argv[1:]))
