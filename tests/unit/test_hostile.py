"""Hostile and broken Notes and tags: each case gives a plan or pvenat's own message.

Anyone who can edit a guest's Notes writes input for a firewall running as root. Every
case names the message it must give (or the plan it must make); the property test at the
end throws arbitrary text at the parser.
"""

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvehook.config import HostConfig
from pvehook.errors import PvenatError
from pvehook.plan import plan_guest, summary
from pvehook.iptables.render import guest_rules
from pvehook.spec import parse

HOST = HostConfig()
NIC = {"net0": "virtio=BC:24:11:00:00:01,bridge=vmbr1", "ipconfig0": "ip=172.22.161.170/24"}


def notes(body):
    return f"Notes\n```pvenat\n{body}\n```\n"


BOMB = notes("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
             "c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nforwards: [*c, *c, *c, *c, *c, *c]")
BIG_BLOCK = notes("forwards:\n" + "  - 10000  # padding padding padding padding\n" * 30000)
BIG_NOTES = "x" * 1_000_000 + "\n" + notes("forwards: [10000]")

# (case, notes, tags, what it must say: an error substring, or "OK " + the summary)
CASES = [
    ("alias bomb", BOMB, "", "anchors and aliases (&name, *name) are not allowed"),
    ("merge key", notes("base: &b {ports: 10000}\nforwards:\n  - <<: *b"), "",
     "anchors and aliases"),
    ("1 MB pvenat block", BIG_BLOCK, "", "the pvenat block is larger than 16 KiB"),
    ("1 MB of Notes around a small block", BIG_NOTES, "",
     "OK pvenat: 101 -> 172.22.161.170 via 203.0.113.10: tcp 10000"),
    ("duplicate keys", notes("forwards: [10000]\nforwards: [10001]"), "",
     "key 'forwards' appears twice (first on line 3)"),
    ("duplicate keys in a forward", notes("forwards:\n  - ports: 10000\n    ports: 10001"), "",
     "key 'ports' appears twice"),
    ("port as a quoted string", notes('forwards: ["10000"]'), "",
     "OK pvenat: 101 -> 172.22.161.170 via 203.0.113.10: tcp 10000"),
    ("port as a float", notes("forwards: [10000.5]"), "", "'10000.5' is not a forward"),
    ("negative port", notes("forwards: [-10000]"), "", "'-10000' is not a forward"),
    ("port 0", notes("forwards: [0]"), "", "port 0 is out of range (1-65535)"),
    ("port 65536", notes("forwards: [65536]"), "", "port 65536 is out of range"),
    ("six-digit port", notes("forwards: [100000]"), "", "'100000' is not a forward"),
    ("range of 60,000 ports", notes("forwards: [1000-61000]"), "",
     "public port 3128 is reserved"),
    ("range past 65535", notes("forwards: [60000-70000]"), "", "port 70000 is out of range"),
    ("pool edge", notes("forwards: [60990-61010]"), "",
     "public port 61000 is outside the port pool (10000-60999)"),
    ("fullwidth digits", notes("forwards: [１００００]"), "", "is not a forward"),
    ("Arabic-Indic digits", notes("forwards: [١٠٠٠٠]"), "", "is not a forward"),
    ("superscript digits in a tag", "", "pvenat-¹⁰⁰⁰⁰", "looks like a pvenat tag"),
    ("quote and option in a port", notes('forwards: ["10000 -j ACCEPT"]'), "",
     "'10000 -j ACCEPT' is not a forward"),
    ("newline in a port", notes('forwards: ["10000\\n-A INPUT -j ACCEPT"]'), "",
     "is not a forward"),
    ("quote in ip", notes('ip: "172.22.161.170\\" -j DROP"\nforwards: [10000]'), "",
     "is not an IPv4 address"),
    ("newline in allow", notes('forwards:\n  - ports: 10000\n    allow: ["1.2.3.4\\n-j ACCEPT"]'),
     "", "is not an IPv4 or IPv6 address or network"),
    ("comment in allow", notes("forwards:\n  - ports: 10000\n    allow: ['1.2.3.4 -m comment']"),
     "", "is not an IPv4 or IPv6 address or network"),
    ("block twice", notes("forwards: [10000]") + notes("forwards: [10001]"), "",
     "a second pvenat block (the first is on line 2); merge them into one"),
    ("unclosed block", "```pvenat\nforwards: [10000]\n", "", "the pvenat block is not closed"),
    ("tag with underscore", "", "pvenat_10000", "tag 'pvenat_10000' looks like a pvenat tag"),
    ("tag with no port", "", "pvenat-", "tag 'pvenat-' looks like a pvenat tag"),
    ("tag with trailing dash", "", "pvenat-10000-", "looks like a pvenat tag"),
    ("tag with a word", "", "pvenat-web", "tag 'pvenat-web' looks like a pvenat tag"),
    ("tag with a prefix word", "", "pvenatx-10000", "looks like a pvenat tag"),
    ("tag reversed", "", "pvenat-10010-10000", "range 10010-10000 is reversed; write "
     "10000-10010"),
    ("tag port 0", "", "pvenat-0", "port 0 is out of range"),
    ("tag that is someone else's", "", "xpvenat-10000;web", "OK unmanaged"),
    ("tag with leading zeros", "", "pvenat-00080", "public port 80 is outside the port pool"),
    ("python object tag", notes("forwards: !!python/object/apply:os.system [id]"), "",
     "'id' is not a forward"),  # tags are never acted on: the list is read as plain text
    ("python object entry", notes("forwards:\n  - !!python/object/apply:os.system [id]"), "",
     "a forward is a line such as"),
    ("forwards as a mapping", notes("forwards: {a: 10000}"), "", "'forwards' must be a list"),
    ("forwards empty", notes("forwards:"), "", "'forwards' must be a list"),
    ("an empty mapping as a forward", notes("forwards:\n  - {}"), "",
     "guest 101, Notes line 4: this forward has no 'ports:'"),
    ("ports as a list", notes("forwards:\n  - ports: [10000, 10001]"), "",
     "ports: a list or mapping"),
    ("proto in capitals", notes("forwards:\n  - ports: 10000\n    proto: TCP"), "",
     "OK pvenat: 101 -> 172.22.161.170 via 203.0.113.10: tcp 10000"),
    ("protocol suffix in capitals", notes("forwards: [12222:22/TCP]"), "",
     "OK pvenat: 101 -> 172.22.161.170 via 203.0.113.10: tcp 12222->22"),
    ("the arrow pvenat prints", notes("forwards: [12222->22, '13000->3000/UDP']"), "",
     "OK pvenat: 101 -> 172.22.161.170 via 203.0.113.10: tcp 12222->22, udp 13000->3000"),
    ("spaces around the colon", notes("forwards:\n  - 12222 : 22"), "",
     "guest 101, Notes line 4: '12222 : 22' reads as a YAML mapping because of the space "
     "before ':'; write '12222:22'"),
    ("proto unknown", notes("forwards:\n  - ports: 10000\n    proto: sctp"), "",
     "proto: 'sctp'; use tcp, udp or both"),
    ("proto icmp", notes("forwards: [10000/icmp]"), "", "'10000/icmp' is not a forward"),
    ("allow empty", notes("forwards:\n  - ports: 10000\n    allow: []"), "",
     "'allow' is empty, which would let nobody in"),
    ("allow /33", notes("forwards:\n  - ports: 10000\n    allow: [10.0.0.0/33]"), "",
     "'10.0.0.0/33' is not an IPv4 or IPv6 address or network"),
    ("allow IPv6 host bits", notes("forwards:\n  - ports: 10000\n    allow: ['2001:db8::1/32']"),
     "", "guest 101, Notes line 5: allow: '2001:db8::1/32' is not an IPv4 or IPv6 address or "
     "network (did you mean 2001:db8::/32?)"),
    ("ip6 not an address", notes("ip6: 2001:db8::zz\nforwards: [10000]"), "",
     "guest 101, Notes line 3: ip6: '2001:db8::zz' is not an IPv6 address"),
    ("ip loopback", notes("ip: 127.0.0.1\nforwards: [10000]"), "",
     "address 127.0.0.1 is not in the guest subnet 172.22.161.0/24"),
    ("ip is the public address", notes("ip: 203.0.113.10\nforwards: [10000]"), "",
     "address 203.0.113.10 is not in the guest subnet"),
    ("ip is the host", notes("ip: 172.22.161.254\nforwards: [10000]"), "",
     "is the subnet's network, broadcast or host address"),
    ("ip is the network", notes("ip: 172.22.161.0\nforwards: [10000]"), "",
     "is the subnet's network, broadcast or host address"),
    ("ip as a list", notes("ip: [172.22.161.170]\nforwards: [10000]"), "",
     "ip: a list or mapping is not an IPv4 address"),
    ("reserved port", notes("forwards: [8006]"), "", "public port 8006 is reserved"),
    ("reserved range", notes("forwards: [5899-5900:15899-15900]"), "",
     "public port 5900 is reserved"),
    ("too many entries", notes("forwards: [" + ", ".join(str(20000 + i) for i in range(65))
                               + "]"), "", "65 forwards, more than the 64 allowed"),
    ("unequal range lengths", notes("forwards: [10000-10009:20-30]"), "",
     "maps 10 public ports to 11 guest ports"),
    ("reversed guest range", notes("forwards: [10000-10010:30-20]"), "",
     "range 30-20 is reversed; write 20-30"),
    ("trailing colon", notes("forwards: ['10000:']"), "", "'10000:' is not a forward"),
    ("leading colon", notes("forwards: [':22']"), "", "':22' is not a forward"),
    ("double slash", notes("forwards: [10000//tcp]"), "", "is not a forward"),
    ("10,000 characters on a line", notes("forwards: ['" + "1" * 10000 + "']"), "",
     "'1111111111111111111111111111111111111111...' is not a forward"),
    ("deep nesting", notes("forwards: " + "[" * 500 + "]" * 500), "",
     "nested more than 16 levels deep"),
    ("tab indentation", notes("forwards:\n\t- 10000"), "",
     "guest 101, Notes line 4: a tab; YAML indents with spaces only: put spaces where the "
     "tab is"),
    ("control character", notes("forwards: [10000]\x07"), "",
     "guest 101, Notes line 3: invalid YAML: character '\\x07' is not allowed"),
    ("two documents", notes("forwards: [10000]\n---\nforwards: [10001]"), "",
     "line 4: invalid YAML: expected a single document in the stream that starts on line 3: "
     "but found another document"),
    ("a list for a key", notes("? [a]\n: b\nforwards: [10000]"), "",
     "a key must be a plain word"),
    ("same port twice", notes("forwards: [10000, 10000/both]"), "",
     "tcp port 10000 is forwarded twice"),
    ("block indented as code", "    ```pvenat\n    forwards: [10000]\n    ```", "",
     "OK unmanaged"),
]


def outcome(text, tags):
    try:
        spec = parse(101, text, tags)
        if spec is None:
            return "OK unmanaged"
        plan = plan_guest(spec, "qemu", NIC, HOST)
        for rule in guest_rules(plan):  # whatever reaches iptables is plain and short
            assert all(c.isprintable() for c in rule) and '"' not in rule and len(rule) < 200
        return "OK " + summary(plan, "203.0.113.10")
    except PvenatError as e:
        assert "\n" not in e.message and len(e.message) < 600
        return e.message


@pytest.mark.parametrize("case,text,tags,expected", CASES, ids=[c[0] for c in CASES])
def test_corpus(case, text, tags, expected):
    start = time.monotonic()
    assert expected in outcome(text, tags)
    assert time.monotonic() - start < 1.0


def test_corpus_is_large_enough():
    assert len(CASES) >= 40


YAMLISH = st.lists(st.sampled_from(list("0123456789-:/,[]{}&*!|>#'\"\n\t ") + [
    "tcp", "udp", "both", "ports: ", "proto: ", "allow: ", "forwards:\n", "ip: ", "  - ",
    "１", "10000", "172.22.161.9", "/24"]), max_size=60).map("".join)


# database=None: no examples kept in the checkout, which a normal user may not write to
@settings(max_examples=400, deadline=500, suppress_health_check=[HealthCheck.too_slow],
          database=None)
@given(body=YAMLISH, tags=st.text(max_size=40), before=st.text(max_size=100))
def test_any_notes_give_a_plan_or_our_error(body, tags, before):
    outcome(before + "\n```pvenat\n" + body + "\n```\n", tags)


@settings(max_examples=300, deadline=500, database=None)
@given(text=st.text(max_size=2000))
def test_any_text_gives_a_plan_or_our_error(text):
    outcome(text, "")
