"""PVE API access through proxmoxer: the local pvesh backend or an API token over HTTPS.

proxmoxer is imported only when a request is made, so phases that need no API (post-stop,
post-start) never pay for it.
"""

import signal
from contextlib import contextmanager
from typing import NamedTuple

from .config import PveSettings
from .errors import PvenatError

KINDS = ("qemu", "lxc")


class Guest(NamedTuple):
    vmid: int
    kind: str  # qemu or lxc
    config: dict


class GuestInfo(NamedTuple):
    vmid: int
    kind: str
    name: str
    status: str  # running, stopped, ...


class PveApi:
    def __init__(self, settings: PveSettings):
        self.settings = settings
        self._api = None

    def _client(self):
        if self._api is None:
            self._api = connect(self.settings)
        return self._api

    def _call(self, method: str, path: str, **params):
        client = self._client()
        with deadline(self.settings.timeout):
            return getattr(client(path), method)(**params)

    def guest(self, node: str, vmid: int, kind: str = "") -> Guest:
        """The guest's current config; without ``kind``, trying QEMU then LXC (the hook
        is told neither)."""
        for kind in [kind] if kind else KINDS:
            path = f"nodes/{node}/{kind}/{vmid}/config"
            try:
                config = self._call("get", path)
            except PvenatError:
                raise
            except Exception as e:  # proxmoxer raises backend-specific types
                if "does not exist" in str(e):
                    continue
                raise api_error(f"guest {vmid}: cannot read /{path}", e) from None
            if not isinstance(config, dict) or "errors" in config or not all(
                    isinstance(k, str) for k in config):
                raise PvenatError("pve", f"guest {vmid}: the PVE API answered /{path} with "
                                  f"something that is not a guest config: {str(config)[:200]!r}")
            return Guest(vmid, kind, config)
        raise PvenatError("pve", f"guest {vmid}: no QEMU or LXC config on node {node}; is the "
                          "VMID right, and does pve.node name this node?")

    def guests(self, node: str) -> list[GuestInfo]:
        """Every QEMU and LXC guest on the node, with its status: one request."""
        try:
            items = self._call("get", "cluster/resources", type="vm")
            out = [GuestInfo(int(i["vmid"]), i["type"], str(i.get("name", "")),
                             str(i.get("status", "unknown")))
                   for i in items if i.get("node") == node and i.get("type") in KINDS]
        except PvenatError:
            raise
        except Exception as e:
            raise api_error(f"cannot list the guests of node {node}", e) from None
        return sorted(out, key=lambda g: g.vmid)

    def storage_content(self, storage: str) -> list[str]:
        try:
            data = self._call("get", f"storage/{storage}")
        except PvenatError:
            raise
        except Exception as e:
            raise api_error(f"cannot read storage {storage}", e) from None
        return [c for c in str(data.get("content", "")).split(",") if c]

    def set_storage_content(self, storage: str, content: str):
        try:
            self._call("put", f"storage/{storage}", content=content)
        except PvenatError:
            raise
        except Exception as e:
            raise api_error(f"cannot change storage {storage}", e) from None

    def set_config(self, node: str, guest: Guest, **options):
        path = f"nodes/{node}/{guest.kind}/{guest.vmid}/config"
        try:
            self._call("put", path, **options)
        except PvenatError:
            raise
        except Exception as e:
            raise api_error(f"guest {guest.vmid}: cannot change /{path}", e) from None


class ApiTimeout(Exception):
    pass


@contextmanager
def deadline(seconds: int):
    """Give up after ``seconds``: proxmoxer 1.2's HTTPS backend has no request timeout,
    and PVE runs hookscripts with none, so a hung API would hang the guest's start."""
    def expire(signum, frame):
        raise ApiTimeout(f"no answer within {seconds} s (pve.timeout)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def api_error(what: str, e: Exception) -> PvenatError:
    kind = type(e).__name__
    text = str(e).strip().splitlines()[0][:300] if str(e).strip() else "no message"
    return PvenatError("pve", f"{what}: {kind}: {text}; check that the PVE API answers "
                       "(pvesh get /version) and the pve settings in the pvenat config")


def connect(settings: PveSettings):
    import proxmoxer

    if settings.backend == "local":
        if "local" not in proxmoxer.core.SERVICES["PVE"]["supported_backends"]:
            raise PvenatError("pve", "this proxmoxer has no 'local' backend (it came with "
                              "proxmoxer 1.3); set 'pve: {backend: https}' with an API "
                              "token ('pvenat install --token' sets it up)")
        return proxmoxer.ProxmoxAPI(backend="local", timeout=settings.timeout)
    try:
        with open(settings.token_file, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as e:
        raise PvenatError("pve", f"API token file {settings.token_file}: {e.strerror}; "
                          "create it with 'pvenat install --token'") from None
    verify = {"true": True, "false": False}.get(settings.verify_ssl, settings.verify_ssl)
    return proxmoxer.ProxmoxAPI(settings.host, port=settings.port, user=settings.user,
                                token_name=settings.token_name, token_value=token,
                                verify_ssl=verify, timeout=settings.timeout)
