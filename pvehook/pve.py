"""PVE API access through proxmoxer: pvesh on this node (pvesh.py), or an API token over
HTTPS.

proxmoxer is imported only when a request is made, so phases that need no API (post-stop,
post-start) never pay for it.
"""

import signal
from contextlib import contextmanager
from typing import NamedTuple

from . import pvesh
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

    def _call(self, what: str, method: str, path: str, **params):
        """One request; any failure becomes a PvenatError that says ``what`` failed."""
        try:
            if self._api is None:
                self._api = connect(self.settings)
            with deadline(self.settings.timeout):
                return getattr(self._api(path), method)(**params)
        except PvenatError:
            raise
        except Exception as e:  # proxmoxer raises backend-specific types
            raise api_error(what, e) from None

    def guest(self, node: str, vmid: int, kind: str = "") -> Guest:
        """The guest's current config, without pending changes (current=1): what runs,
        for a sync; at pre-start PVE has applied them already. Without ``kind``, trying
        QEMU then LXC (the hook is told neither)."""
        for found in [kind] if kind else KINDS:
            path = f"nodes/{node}/{found}/{vmid}/config"
            try:
                config = self._call(f"guest {vmid}: cannot read /{path}", "get", path,
                                    current=1)
            except PvenatError as e:
                if "does not exist" in e.message:
                    continue
                raise
            if not isinstance(config, dict) or "errors" in config or not all(
                    isinstance(k, str) for k in config):
                raise PvenatError("pve", f"guest {vmid}: the PVE API answered /{path} with "
                                  f"something that is not a guest config: {str(config)[:200]!r}")
            return Guest(vmid, found, config)
        raise PvenatError("pve", f"guest {vmid}: no QEMU or LXC config on node {node}; is the "
                          "VMID right, and does pve.node name this node?")

    def guests(self, node: str) -> list[GuestInfo]:
        """Every QEMU and LXC guest on the node, with its status: one request."""
        what = f"cannot list the guests of node {node}"
        items = self._call(what, "get", "cluster/resources", type="vm")
        try:
            out = [GuestInfo(int(i["vmid"]), i["type"], str(i.get("name", "")),
                             str(i.get("status", "unknown")))
                   for i in items if i.get("node") == node and i.get("type") in KINDS]
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise api_error(what, e) from None
        return sorted(out, key=lambda g: g.vmid)

    def storage_content(self, storage: str) -> list[str]:
        data = self._call(f"cannot read storage {storage}", "get", f"storage/{storage}")
        return [c for c in str(data.get("content", "")).split(",") if c]

    def set_storage_content(self, storage: str, content: str):
        self._call(f"cannot change storage {storage}", "put", f"storage/{storage}",
                   content=content)

    def set_config(self, node: str, guest: Guest, **options):
        path = f"nodes/{node}/{guest.kind}/{guest.vmid}/config"
        self._call(f"guest {guest.vmid}: cannot change /{path}", "put", path, **options)


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
    """proxmoxer on pvesh (the default: root on this node), or on the HTTPS API with a
    token."""
    if settings.backend == "local":
        return pvesh.client(settings.timeout)
    import proxmoxer

    try:
        with open(settings.token_file, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as e:
        raise PvenatError("pve", f"API token file {settings.token_file}: {e.strerror}; "
                          "create it with 'pvenat install --token'") from None
    verify = {"true": True, "false": False, "pve": settings.ca_file()}.get(
        settings.verify_ssl, settings.verify_ssl)
    api = proxmoxer.ProxmoxAPI(settings.host, port=settings.port, user=settings.user,
                               token_name=settings.token_name, token_value=token,
                               verify_ssl=verify, timeout=settings.timeout)
    # This node's own API: never through a proxy that https_proxy in the environment names
    # (requests' session, as proxmoxer 1.2 to 2.3 keep it).
    api._store["session"].trust_env = False
    return api
