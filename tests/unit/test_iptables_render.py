"""Rendering, reading back and diffing pvenat's rules: pure, no kernel."""

import os
import random

import pytest

from pvehook.iptables import parse, render
from pvehook.rules import Public
from pvehook.config import HostConfig
from pvehook.plan import Claim, GuestPlan
from pvehook.spec import Forward

HOST = HostConfig()
PUB = Public("203.0.113.10")
GOLDEN = os.path.join(os.path.dirname(os.path.dirname(__file__)), "golden")
A = GuestPlan(101, "172.22.161.170", (
    Forward("tcp", (10000, 10099), (10000, 10099)),
    Forward("tcp", (12222, 12222), (22, 22)),
    Forward("tcp", (13389, 13389), (3389, 3389), ("198.51.100.0/24", "192.0.2.7/32")),
    Forward("tcp", (18000, 18009), (9000, 9009)),
    Forward("udp", (10000, 10099), (10000, 10099))))
B = GuestPlan(102, "172.22.161.171", (Forward("tcp", (11000, 11000), (11000, 11000)),
                                      Forward("udp", (11000, 11000), (11000, 11000))))


def listed(tables):
    """As iptables-save would list it (chains sorted, rules in order); a jump that must
    be first in its chain as the insert that puts it there."""
    out = []
    for t in render.TABLES:
        out.append(f"*{t}")
        out += [f":{c}" for c in sorted(tables[t].chains)]
        out += [f"-I {chain} 1 {spec}" if (chain, spec) in tables[t].first else
                f"-A {chain} {spec}" for chain, spec in tables[t].jumps]
        for c in sorted(tables[t].chains):
            out += [f"-A {c} {r}" for r in tables[t].chains[c]]
    return "\n".join(out) + "\n"


def test_golden_two_guests():
    got = listed(render.desired(HOST, PUB, [A, B], {}))
    path = os.path.join(GOLDEN, "two_guests.rules")
    if os.environ.get("PVENAT_UPDATE_GOLDEN"):
        with open(path, "w") as f:
            f.write(got)
    with open(path) as f:
        assert got == f.read()


def test_hand_pinned_rules():
    """A few lines written by hand, so a regenerated golden file cannot bless a bug."""
    nat = render.desired(HOST, PUB, [A], {}).get("nat")
    assert ("PREROUTING", "-d 203.0.113.10/32 -i vmbr0 -j PVENAT-DNAT") in nat.jumps
    assert ("PREROUTING", "-d 203.0.113.10/32 -i vmbr1 -j PVENAT-DNAT") in nat.jumps
    assert ("OUTPUT", "-d 203.0.113.10/32 -j PVENAT-DNAT") in nat.jumps
    assert nat.chains["PVENAT-101"] == (
        "-p tcp -m multiport --dports 10000:10099 -j DNAT --to-destination 172.22.161.170",
        "-p tcp -m multiport --dports 12222 -j DNAT --to-destination 172.22.161.170:22",
        "-s 198.51.100.0/24 -p tcp -m multiport --dports 13389 -j DNAT "
        "--to-destination 172.22.161.170:3389",
        "-s 192.0.2.7/32 -p tcp -m multiport --dports 13389 -j DNAT "
        "--to-destination 172.22.161.170:3389",
        "-p tcp -m multiport --dports 18000:18009 -j DNAT "
        "--to-destination 172.22.161.170:9000-9009/18000",
        "-p udp -m multiport --dports 10000:10099 -j DNAT --to-destination 172.22.161.170")
    # 12222 = 0x2FBE: root -> 2 -> 2F -> 2FB, where the claim sits.
    assert "-p tcp -m multiport --dports 12222 -j PVENAT-101" in nat.chains["PVENAT-TCP-2FB"]
    assert "-p tcp -m multiport --dports 8192:12287 -j PVENAT-TCP-2" in nat.chains["PVENAT-TCP"]
    # 10000-10099 = 0x2710-0x2773 shares the prefix 27.
    assert "-p tcp -m multiport --dports 10000:10099 -j PVENAT-101" in nat.chains["PVENAT-TCP-27"]
    filt = render.desired(HOST, PUB, [A], {})["filter"]
    assert filt.jumps == [("FORWARD", "-j PVENAT-FORWARD"),
                          ("INPUT", "-i vmbr1 -j PVENAT-INPUT")]
    # DHCP from anywhere on vmbr1 (a DISCOVER comes from 0.0.0.0), DNS from the guest
    # subnet to the host's lan address; the jump first in INPUT, ahead of pve-firewall's
    assert filt.first == {("INPUT", "-i vmbr1 -j PVENAT-INPUT")}
    assert filt.chains["PVENAT-INPUT"] == (
        "-p udp -m multiport --dports 67 -j ACCEPT",
        "-s 172.22.161.0/24 -d 172.22.161.254/32 -p udp -m multiport --dports 53 -j ACCEPT",
        "-s 172.22.161.0/24 -d 172.22.161.254/32 -p tcp -m multiport --dports 53 -j ACCEPT")
    raw = render.desired(HOST, PUB, [A], {})["raw"]
    assert raw.jumps == [("PREROUTING", "-i fwbr+ -j PVENAT-ZONE")]
    assert raw.first == {("PREROUTING", "-i fwbr+ -j PVENAT-ZONE")}  # before any CT helper
    assert raw.chains == {"PVENAT-ZONE": ("-j CT --zone 1",)}
    # the NAT boundary: from vmbr0 into the guest subnet, only replies and DNATed
    # connections pass; everything else is dropped before filter FORWARD
    mangle = render.desired(HOST, PUB, [A], {})["mangle"]
    assert mangle.jumps == [("FORWARD", "-d 172.22.161.0/24 -i vmbr0 -j PVENAT-INBOUND")]
    assert mangle.chains == {"PVENAT-INBOUND": (
        "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        "-m conntrack --ctstate DNAT -j RETURN",
        "-j DROP")}


def test_allow_routed_and_dhcp_off():
    host = HOST._replace(allow_routed=("198.51.100.0/24", "203.0.113.2/32"), dhcp=False)
    tables = render.base(host, PUB)
    assert tables["mangle"].chains["PVENAT-INBOUND"][2:] == (
        "-s 198.51.100.0/24 -j RETURN", "-s 203.0.113.2/32 -j RETURN", "-j DROP")
    assert "PVENAT-INPUT" not in tables["filter"].chains
    assert tables["filter"].jumps == [("FORWARD", "-j PVENAT-FORWARD")]
    assert tables["filter"].first == frozenset()


def test_a_jump_that_must_be_first_is_put_back_first():
    """pve-firewall's raw PVEFW-PREROUTING (with a CT helper) or anyone's rule got ahead
    of pvenat's zone jump: the jump is taken out and inserted at the head again, and
    status says which."""
    wanted = render.desired(HOST, PUB, [], {})
    save = "\n".join(["*raw", ":PREROUTING ACCEPT [0:0]", ":PVEFW-PREROUTING - [0:0]",
                      ":PVENAT-ZONE - [0:0]", "-A PREROUTING -j PVEFW-PREROUTING",
                      "-A PREROUTING -i fwbr+ -j PVENAT-ZONE",
                      "-A PVEFW-PREROUTING -p tcp -m tcp --dport 21 -j CT --helper ftp",
                      "-A PVENAT-ZONE -j CT --zone 1", "COMMIT"])
    current = {t: wanted[t].copy() for t in render.TABLES}
    current["raw"] = parse.parse_save(save)
    assert current["raw"].jumps == [("PREROUTING", "-i fwbr+ -j PVENAT-ZONE")]
    assert current["raw"].first == frozenset()
    assert render.base_missing(current, HOST, PUB) == [
        "raw PREROUTING jump PVENAT-ZONE (not first)"]
    assert render.restore_script(current, render.with_base(current, HOST, PUB)) == (
        "*raw\n-D PREROUTING -i fwbr+ -j PVENAT-ZONE\n"
        "-I PREROUTING 1 -i fwbr+ -j PVENAT-ZONE\nCOMMIT\n")
    first = parse.parse_save(save.replace("-A PREROUTING -j PVEFW-PREROUTING\n", "") +
                             "\n")
    assert first.first == {("PREROUTING", "-i fwbr+ -j PVENAT-ZONE")}


def walk(chains, proto, port):
    """The rules a new connection to ``port`` evaluates, and the guest it reaches."""
    chain, steps = "PVENAT-DNAT", 0
    while True:
        for rule in chains[chain]:
            steps += 1
            words = rule.split()
            if words[1] != proto:
                continue
            if "--dports" in words:
                lo, _, hi = words[words.index("--dports") + 1].partition(":")
                if not int(lo) <= port <= int(hi or lo):
                    continue
            target = words[-1]
            if render.is_guest_chain(target):
                return int(target.split("-")[1]), steps
            chain = target
            break
        else:
            return None, steps


def test_tree_walk_is_short_and_exact_with_1000_guests():
    rng = random.Random(7)
    plans, start = [], 10000
    for vmid in range(1000, 2000):
        width = rng.choice([1, 1, 5, 50])
        fw = [Forward("tcp", (start, start + width - 1), (start, start + width - 1)),
              Forward("udp", (start, start + width - 1), (start, start + width - 1))]
        plans.append(GuestPlan(vmid, "172.22.161.2", tuple(fw)))
        start += width + rng.choice([0, 0, 3])
    chains = render.desired(HOST, PUB, plans, {})["nat"].chains
    worst = 0
    for plan in plans:
        for f in plan.forwards:
            for port in {f.public[0], f.public[1]}:
                vmid, steps = walk(chains, f.proto, port)
                assert vmid == plan.vmid
                worst = max(worst, steps)
    assert walk(chains, "tcp", start + 100)[0] is None
    assert worst <= 4 * 32 + 2  # four nodes of at most 16 claims and 16 children


def saved(tables):
    """What iptables-save prints for these tables (one table's text each)."""
    out = {}
    for t in render.TABLES:
        lines = [f"*{t}", ":PREROUTING ACCEPT [0:0]", ":FOREIGN - [0:0]"]
        lines += [f":{c} - [0:0]" for c in tables[t].chains]
        lines += [f"-A {chain} {spec}" for chain, spec in tables[t].jumps]
        lines += ["-A PREROUTING -p tcp -m tcp --dport 80 -j FOREIGN"]
        for c, rules in tables[t].chains.items():
            lines += [f"-A {c} {r}" for r in rules]
        out[t] = "\n".join(lines + ["COMMIT"])
    return out


def test_parse_save_reads_back_only_ours():
    want = render.desired(HOST, PUB, [A, B], {})
    got = {t: parse.parse_save(text) for t, text in saved(want).items()}
    assert {t: (got[t].chains, got[t].jumps) for t in got} == \
        {t: (want[t].chains, want[t].jumps) for t in want}
    assert sorted(parse.held_claims(got)) == sorted(
        [Claim(f.proto, *f.public, 101) for f in A.forwards] +
        [Claim(f.proto, *f.public, 102) for f in B.forwards])
    assert parse.guest_addresses(got) == {"172.22.161.170": 101, "172.22.161.171": 102}


def test_diff_is_empty_when_equal_and_minimal_otherwise():
    both = render.desired(HOST, PUB, [A, B], {})
    assert render.restore_script(both, both) == ""
    only_b = render.with_guest(both, HOST, None, 101, None)
    script = render.restore_script(both, only_b)
    assert "-F PVENAT-101" in script and "-X PVENAT-101" in script
    assert "PVENAT-102" not in script.replace("-j PVENAT-102", "")  # B's chain untouched
    assert only_b["nat"].chains == render.desired(HOST, PUB, [B], {})["nat"].chains
    back = render.with_guest(only_b, HOST, PUB, 101, A)
    assert back["nat"].chains == both["nat"].chains


def test_empty_start_then_remove_keeps_base():
    empty = {t: render.Table() for t in render.TABLES}
    started = render.with_guest(empty, HOST, PUB, 102, B)
    assert started["nat"].chains == render.desired(HOST, PUB, [B], {})["nat"].chains
    stopped = render.with_guest(started, HOST, None, 102, None)
    assert stopped["nat"].chains == render.base(HOST, PUB)["nat"].chains
    assert stopped["nat"].jumps == started["nat"].jumps


@pytest.mark.parametrize("lo,hi,node", [(10000, 10000, "PVENAT-TCP-271"),
                                        (0x2710, 0x271F, "PVENAT-TCP-271"),
                                        (0x2710, 0x2720, "PVENAT-TCP-27"),
                                        (0x2FFF, 0x3000, "PVENAT-TCP")])
def test_claim_sits_in_deepest_common_node(lo, hi, node):
    chains = render.dispatch([Claim("tcp", lo, hi, 9)])
    assert any(r.endswith("-j PVENAT-9") for r in chains[node])


def test_touched_nodes_render_as_the_whole_tree_does():
    rng = random.Random(3)
    claims, port = [], 10000
    for vmid in range(300):
        width = rng.choice([1, 3, 40, 300])
        claims.append(Claim(rng.choice(["tcp", "udp"]), port, port + width - 1, vmid))
        port += width + rng.choice([0, 7])
    full = render.dispatch(claims)
    for c in rng.sample(claims, 20):
        touched = render.claim_path(c)
        part = render.dispatch(claims, touched)
        names = {render._node(render.PREFIX + p.upper(), prefix) for p, prefix in touched}
        assert set(part) == names | {render.DNAT}
        assert all(part[n] == full[n] for n in part)
