"""What pvenat created, in /etc/pvenat/installed.json, so that uninstall takes back that
and no more. Each step owns its facts; a fact is recorded as soon as what it names
exists, so a failure later on never leaves something uninstall does not know about."""

import json

from ..errors import PvenatError

RECORD = "etc/pvenat/installed.json"
FACTS = {
    "bridge": {},  # interfaces files given the lan bridge stanza -> the separator added
    "snippets_content": False,  # 'snippets' added to storage local's content types
    "ip_forward_before": "",  # net.ipv4.ip_forward before install ("" = not changed)
    # the IPv6 sysctls install changed (forwarding, accept_ra, proxy_ndp) -> their values
    # before install
    "ipv6_before": {},
    "units": [],  # the units enabled
    "token": "",  # the API token pvenat created, USER!NAME
    "user": "",  # the PVE user pvenat created for it
    # the hookscript's file as installed (storage local's snippets folder); kept while the
    # snippet is, so that the package's scripts find it (debian/postinst, postrm)
    "snippet": "",
}


class Record:
    def __init__(self, facts: dict):
        self.facts = facts

    @classmethod
    def load(cls, system) -> "Record":
        path = system.path(RECORD)
        text = system.read(path)
        if text is None:
            return cls(dict(FACTS))
        try:
            facts = json.loads(text)
            if not isinstance(facts, dict) or set(facts) - set(FACTS):
                raise ValueError("unknown facts")
        except ValueError as e:
            raise PvenatError("host", f"{path}: unreadable ({e}); restore it from its "
                              ".pvenat-backup or remove it") from None
        return cls(dict(FACTS, **facts))

    def __getattr__(self, name):
        try:
            return self.__dict__["facts"][name]
        except KeyError:
            raise AttributeError(name) from None

    def update(self, system, **facts):
        """Record and save; the file goes when nothing is left to take back."""
        self.facts.update(facts)
        path = system.path(RECORD)
        if self.facts == FACTS:
            system.remove(path)
        else:
            system.write(path, json.dumps(self.facts, indent=1, sort_keys=True) + "\n")
