"""The PVE API through proxmoxer: pvesh on this node (pvesh.py), or an API token over
HTTPS. One of pve.Pve's backends: a reader of guest configs, and (on pvesh, as root) the
writer of every change pvenat makes.

proxmoxer is imported only when a request is made, so phases that need no API (post-stop,
post-start) never pay for it.
"""

import signal
from contextlib import contextmanager

from . import pvesh
from .config import PveSettings
from .errors import PvenatError
from .pve import Guest, GuestInfo

KINDS = ("qemu", "lxc")


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

    def _resources(self, what: str) -> list[dict]:
        items = self._call(what, "get", "cluster/resources", type="vm")
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise PvenatError("pve", f"{what}: the PVE API answered /cluster/resources with "
                              f"something that is not a list of guests: {str(items)[:200]!r}")
        return items

    def kind_of(self, node: str, vmid: int) -> str:
        """qemu or lxc, as /cluster/resources lists the guest on ``node``; "" for none."""
        for i in self._resources(f"guest {vmid}: cannot list the guests of node {node}"):
            if i.get("node") == node and str(i.get("vmid")) == str(vmid) and \
                    i.get("type") in KINDS:
                return i["type"]
        return ""

    def guest(self, node: str, vmid: int, kind: str = "") -> Guest:
        """The guest's current config, with its digest: without pending changes
        (current=1), what runs, for a sync; at pre-start PVE has applied them already.
        Without ``kind`` it is looked up first."""
        kind = kind or self.kind_of(node, vmid)
        if not kind:
            raise PvenatError("pve", f"guest {vmid}: no QEMU or LXC config on node {node}; is "
                              "the VMID right, and does pve.node name this node?")
        path = f"nodes/{node}/{kind}/{vmid}/config"
        config = self._call(f"guest {vmid}: cannot read /{path}", "get", path, current=1)
        if not isinstance(config, dict) or "errors" in config or not all(
                isinstance(k, str) for k in config):
            raise PvenatError("pve", f"guest {vmid}: the PVE API answered /{path} with "
                              f"something that is not a guest config: {str(config)[:200]!r}")
        config = dict(config)
        return Guest(vmid, kind, config, node, str(config.pop("digest", "")))

    def guests(self, node: str) -> list[GuestInfo]:
        """Every QEMU and LXC guest on the node, with its status as pvestatd last saw it:
        one request."""
        what = f"cannot list the guests of node {node}"
        try:
            out = [GuestInfo(int(i["vmid"]), i["type"], str(i.get("name", "")),
                             str(i.get("status", "unknown")))
                   for i in self._resources(what)
                   if i.get("node") == node and i.get("type") in KINDS]
        except (TypeError, ValueError, KeyError) as e:
            raise api_error(what, e) from None
        return sorted(out, key=lambda g: g.vmid)

    def storage(self, storage: str) -> dict:
        """The storage's configuration as GET /storage/{storage} gives it: content as a
        comma list, content-dirs as an object (pve-storage PVE/API2/Storage/Config.pm)."""
        data = self._call(f"cannot read storage {storage}", "get", f"storage/{storage}")
        if not isinstance(data, dict):
            raise PvenatError("pve", f"the PVE API answered /storage/{storage} with something "
                              f"that is not a storage: {str(data)[:200]!r}")
        return data

    def set_storage(self, storage: str, **options):
        self._call(f"cannot change storage {storage}", "put", f"storage/{storage}", **options)

    def set_config(self, node: str, guest, **options):
        """PUT the options (``digest`` among them, when given: PVE refuses the change when
        the config changed since it was read)."""
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
    """PVE's whole reason: PVE::Exception puts the summary on the first line and the
    reason on the lines after it ("400 Parameter verification failed." then
    "hookscript: script '...' does not exist"), pve-common PVE/Exception.pm stringify."""
    kind = type(e).__name__
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    text = " / ".join(lines)[:600] if lines else "no message"
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
