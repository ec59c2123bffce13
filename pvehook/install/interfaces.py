"""The lan bridge in /etc/network/interfaces, as pure text: add the stanza, find it, take
it out again so that the file is what it was, byte for byte."""

import re


def stanza(bridge: str, address) -> str:
    """The bridge as the PVE GUI writes a Linux Bridge, so it shows up there."""
    return (f"auto {bridge}\niface {bridge} inet static\n\taddress {address}\n"
            "\tbridge-ports none\n\tbridge-stp off\n\tbridge-fd 0\n")


def find(text: str, bridge: str):
    """(start, end) line indexes of the bridge's 'auto' + 'iface' block, or None."""
    lines = text.splitlines(True)
    start = next((i for i, line in enumerate(lines)
                  if re.fullmatch(rf"iface\s+{re.escape(bridge)}\s.*", line.strip())), None)
    if start is None:
        return None
    end = start + 1
    while end < len(lines) and (lines[end].startswith((" ", "\t")) and lines[end].strip()):
        end += 1
    if start > 0 and re.fullmatch(rf"(auto|allow-hotplug)\s+{re.escape(bridge)}",
                                  lines[start - 1].strip()):
        start -= 1
    return start, end


def address(text: str, span) -> str | None:
    """The 'address' of the stanza at ``span``."""
    for line in text.splitlines(True)[span[0]:span[1]]:
        m = re.fullmatch(r"address\s+(\S+)", line.strip())
        if m:
            return m.group(1)
    return None


def separator(text: str) -> str:
    """What goes between the file's last line and an appended stanza: one blank line."""
    if text == "" or text.endswith("\n\n"):
        return ""
    return "\n" if text.endswith("\n") else "\n\n"


def with_stanza(text: str, bridge: str, addr) -> str:
    return text + separator(text) + stanza(bridge, addr)


def without_stanza(text: str, bridge: str, sep) -> str:
    """The text with the bridge's stanza taken out; when it is the file's tail, the
    separator ``sep`` added before it goes too (None: a blank line, if there is one)."""
    span = find(text, bridge)
    if span is None:
        return text
    lines = text.splitlines(True)
    head, tail = "".join(lines[:span[0]]), "".join(lines[span[1]:])
    if not tail:
        if sep is None:
            sep = "\n" if head.endswith("\n\n") else ""
        if sep and head.endswith(sep):
            head = head[:-len(sep)]
    return head + tail
