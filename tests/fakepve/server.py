"""Fake PVE API over HTTPS with API-token auth, as pveproxy serves /api2/json.

Run: python3 server.py CERT KEY PORT TOKEN (TOKEN as 'user@realm!name=secret').
Prints 'ready' once listening on 127.0.0.1:PORT.
"""

import json
import os
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
import api  # noqa: E402


class Handler(BaseHTTPRequestHandler):
    token = ""

    def _serve(self, method):
        url = urlsplit(self.path)
        with api.fixture(os.environ["PVENAT_FAKE_PVE"]) as data:
            known = [f"{i}={v}" for i, v in data.get("tokens", {}).items()] + [self.token]
        auth = self.headers.get("Authorization", "")
        if auth not in [f"PVEAPIToken={t}" for t in known]:
            return self._send(401, "authentication failure", {"data": None})
        user = auth[len("PVEAPIToken="):].split("=", 1)[0]  # user@realm!name, never root@pam
        params = dict(parse_qsl(url.query))
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            params.update(parse_qsl(self.rfile.read(length).decode()))
        if not url.path.startswith("/api2/json/"):
            return self._send(404, "Not Found", {"data": None})
        try:
            data = api.handle(url.path[len("/api2/json"):], method, params, user)
        except api.ApiError as e:
            # pve-http-server: the message's first line is the status line's reason; a
            # parameter exception's reasons ("key: reason", the lines after it) go into
            # the body's "errors"
            first, *rest = e.message.split("\n")
            errors = dict(line.split(": ", 1) for line in rest if ": " in line)
            return self._send(e.status, first, {"data": None,
                                                **({"errors": errors} if errors else {})})
        if isinstance(data, str):
            return self._send(200, "OK", data)
        return self._send(200, "OK", {"data": data})

    def _send(self, status, reason, body):
        raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status, reason)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self):
        self._serve("GET")

    def do_PUT(self):
        self._serve("PUT")

    def do_POST(self):
        self._serve("POST")

    def log_message(self, *args):
        pass


def main(cert, key, port, token):
    Handler.token = token
    server = ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(*sys.argv[1:])
