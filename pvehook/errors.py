"""The one error type pvenat raises for anything a person can fix."""


class PvenatError(Exception):
    """A problem with a stable code and a message that says what, where and what to do.

    Codes: ``config`` (host config), ``spec`` (a guest's Notes or tags), ``no-address``
    (a managed guest has no address on lan_bridge yet), ``conflict`` (another guest holds
    it), ``pve`` (the PVE API), ``netfilter`` (the kernel refused), ``host`` (the host's
    own network state), ``usage`` (the command line).
    """

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message
