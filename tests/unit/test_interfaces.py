"""The lan bridge stanza in /etc/network/interfaces, as text: added and taken out again
byte for byte, whatever the file's last line."""

import pytest

from pvehook.install import interfaces

STANZA = interfaces.stanza("vmbr1", "172.22.161.254/24")


@pytest.mark.parametrize("text", [
    "auto lo\niface lo inet loopback\n",  # the usual end
    "auto lo\niface lo inet loopback",  # no newline at the end
    "auto lo\niface lo inet loopback\n\n",  # a blank line already
    "auto lo\niface lo inet loopback\n\n\n",
    "",
    "source /etc/network/interfaces.d/*\n#uplink\n",
])
def test_add_then_remove_is_the_same_file(text):
    new = interfaces.with_stanza(text, "vmbr1", "172.22.161.254/24")
    assert new.endswith(STANZA) and new.startswith(text)
    assert new[len(text):-len(STANZA)] in ("", "\n", "\n\n")  # one blank line between
    sep = interfaces.separator(text)
    assert interfaces.without_stanza(new, "vmbr1", sep) == text


def test_stanza_found_with_its_address_and_edits_after_it_kept():
    text = "auto lo\n\n" + STANZA + "\n# added later\nauto vmbr2\n"
    span = interfaces.find(text, "vmbr1")
    assert interfaces.address(text, span) == "172.22.161.254/24"
    assert interfaces.without_stanza(text, "vmbr1", "\n") == \
        "auto lo\n\n\n# added later\nauto vmbr2\n"
    assert interfaces.find(text, "vmbr3") is None


def test_a_record_from_before_the_separator_was_kept():
    """Older installs recorded only that they added the stanza: a blank line before it
    goes with it."""
    assert interfaces.without_stanza("auto lo\n\n" + STANZA, "vmbr1", None) == "auto lo\n"
