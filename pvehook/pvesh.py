"""proxmoxer on this node's own API: a session that runs pvesh, for every proxmoxer release.

pvenat runs as root on the PVE node, where ``pvesh`` is the API as root@pam (pve-manager
PVE/CLI/pvesh.pm). proxmoxer 1.2 (Debian bookworm, PVE 8) has no local backend, and the
one of 1.3 and later turns anything on stderr into an HTTP 500 (pvesh prints Perl
warnings there beside valid JSON) and leaves pvesh running when it times out. This
session judges by pvesh's exit status and its JSON instead; proxmoxer stays the client:
``client(timeout)("nodes/pve1/qemu/101/config").get()``.

What pvesh does, from its source: one line of JSON on stdout and exit 0; nothing at all
for a call that returns null (a config PUT); on an error, the message on stderr
("400 Parameter verification failed." and the parameters for a bad call, a bare message
such as "Configuration file 'nodes/pve1/qemu-server/9.conf' does not exist" otherwise)
and a non-zero exit (Perl's die: errno, else 255).
"""

import json
import re
import subprocess

from .errors import PvenatError

_VERBS = {"GET": "get", "POST": "create", "PUT": "set", "DELETE": "delete"}
_STATUS = re.compile(r"([0-9]{3}) \S")
# The statuses PVE's errors carry that proxmoxer 1.2 can name (it looks each up in
# http.client.responses, whose import would cost a hook more than all its own); others
# count as 500.
_KNOWN = {400, 401, 403, 404, 405, 500, 501, 503}
_PERL_WARNING = re.compile(r".* at \S+ line [0-9]+\.")  # "Use of ... at /usr/.../X.pm line 9."


class Response:
    """What proxmoxer reads of a response. No ``reason``: proxmoxer then reports an error
    as status and text alone, the same in 1.2 and 2.x."""

    def __init__(self, content: str, status_code: int):
        self.content = self.text = content
        self.status_code = status_code
        self.headers = {}


class Session:
    def __init__(self, timeout: int):
        self.timeout = timeout

    def request(self, method, url, data=None, params=None, headers=None):
        argv = ["pvesh", _VERBS[method.upper()], url]
        for key, value in {**(data or {}), **(params or {})}.items():
            if value is not None:
                argv += [f"-{key}", str(value)]
        argv += ["--output-format", "json"]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout)
        except FileNotFoundError:
            raise PvenatError("pve", "pvesh not found: pvenat talks to PVE through pvesh on "
                              "the node; run it on a Proxmox VE node") from None
        except OSError as e:
            raise PvenatError("pve", f"pvesh could not be run: {e.strerror}") from None
        except subprocess.TimeoutExpired:  # subprocess.run has killed it
            raise TimeoutError(f"no answer within {self.timeout} s (pve.timeout)") from None
        if proc.returncode == 0:  # warnings on stderr or not: the JSON is the answer
            return Response(proc.stdout.strip() or "null", 200)
        lines = [line for line in proc.stderr.splitlines()
                 if line.strip() and not _PERL_WARNING.fullmatch(line)]
        message = "\n".join(lines) or proc.stdout.strip() or f"exit {proc.returncode}"
        m = _STATUS.match(message)
        status = int(m.group(1)) if m and int(m.group(1)) in _KNOWN else 500
        return Response(message, status)


class Serializer:
    """pvesh's JSON as it is (no 'data' wrapper, unlike the HTTPS API)."""

    def loads(self, response):
        try:
            return json.loads(response.content)
        except ValueError:
            return {"errors": response.content}

    def loads_errors(self, response):
        return None


def client(timeout: int):
    """A proxmoxer resource over pvesh: the same calls as proxmoxer.ProxmoxAPI."""
    from proxmoxer.core import ProxmoxResource

    return ProxmoxResource(base_url="", session=Session(timeout), serializer=Serializer())
