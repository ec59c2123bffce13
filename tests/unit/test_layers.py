"""The import layers hold: base -> model -> adapters -> commands. A module imports from
its own layer or the ones below, never from above: the model stays pure.

The rules backend is one place: pvehook/iptables/ holds everything of iptables (rule
syntax, iptables-save parsing, the index, iptables-restore), and only the seam's
factory (rules.backend) imports it. A backend for nftables, or a second family, is one
more package behind rules.Backend: no command, model or other adapter changes."""

import ast
import os
import re

import pvehook

LAYERS = [
    ("base", {"__init__", "errors", "files", "logs", "ports", "yamlstrict"}),
    ("model", {"config", "spec", "plan", "leases", "ipv6"}),
    ("adapters", {"rules", "iptables", "plancache", "pve", "pveapi", "pvesh", "pveconf",
                  "hostnet", "dhcp", "neighbours"}),
    ("commands", {"context", "hook", "sync", "listing", "status", "cli", "__main__", "attach",
                  "install"}),
]
PACKAGE = os.path.dirname(pvehook.__file__)
BACKEND = "iptables"  # the package behind rules.Backend
SEAM = ("rules", "backend")  # the module and the function that may import it
# iptables rule syntax: pvenat's chain names, targets, matches, restore script lines
RULE_SYNTAX = re.compile(
    r"PVENAT-|-[jg] (?:DNAT|SNAT|MASQUERADE|ACCEPT|DROP|RETURN|CT)\b|"
    r"--(?:dports?|sports?|to-destination|to-source|ctstate|ctorigdst|zone)\b|"
    r"-m (?:conntrack|multiport|udp|tcp)\b|^\*(?:nat|filter|mangle|raw)$|\bCOMMIT\b|"
    r"\b(?:PREROUTING|POSTROUTING)\b|-[AIDFX] [A-Z]{3,}", re.M)


def layer_of(module: str) -> int:
    top = module.split(".")[0]
    return next(i for i, (_, names) in enumerate(LAYERS) if top in names)


def modules():
    for folder, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, PACKAGE)[:-3].replace(os.sep, ".")
                yield rel.removesuffix(".__init__") or "__init__", path


def imported(path: str, module: str, where: bool = False):
    """pvehook modules imported by the file, relative and absolute imports resolved; a
    name imported from a package that is not a module counts as the package's __init__.
    With ``where``, (module, the function the import sits in or None) pairs."""
    known = {m for m, _ in modules()}
    package = module.split(".")[:-1] if not path.endswith("__init__.py") else \
        module.split(".")
    tree = ast.parse(open(path).read())
    inside = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for child in ast.walk(node):
                inside.setdefault(child, node.name)
    for node in ast.walk(tree):
        found = []
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            if node.module:
                found.append(".".join(base + [node.module]))
            else:
                for alias in node.names:
                    target = ".".join(base + [alias.name])
                    found.append(target if target in known else ".".join(base) or "__init__")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pvehook."):
            found.append(node.module.removeprefix("pvehook."))
        elif isinstance(node, ast.Import):
            found += [a.name.removeprefix("pvehook.") for a in node.names
                      if a.name.startswith("pvehook.")]
        for target in found:
            yield (target, inside.get(node)) if where else target


def test_every_module_has_a_layer():
    for module, _ in modules():
        assert layer_of(module) is not None


def test_no_module_imports_from_a_layer_above():
    wrong = []
    for module, path in modules():
        mine = layer_of(module)
        for target in imported(path, module):
            if target and layer_of(target) > mine:
                wrong.append(f"{module} ({LAYERS[mine][0]}) imports {target} "
                             f"({LAYERS[layer_of(target)][0]})")
    assert wrong == []


def in_backend(module: str) -> bool:
    return module.split(".")[0] == BACKEND


def test_only_the_seams_factory_imports_the_backend():
    wrong = []
    for module, path in modules():
        if in_backend(module):
            continue
        for target, function in imported(path, module, where=True):
            if in_backend(target) and (module, function) != SEAM:
                wrong.append(f"{module} ({function or 'module level'}) imports {target}")
    assert wrong == []


def test_no_rule_syntax_outside_the_backend():
    """Commands, the model and the other adapters speak intent: no chain name, target,
    match or restore line of iptables in their code, comments or messages."""
    wrong = []
    for module, path in modules():
        if in_backend(module):
            continue
        for n, line in enumerate(open(path), 1):
            if RULE_SYNTAX.search(line):
                wrong.append(f"{module}:{n}: {line.strip()}")
    assert wrong == []


def test_the_checks_would_catch_the_backend():
    """The two tests above are not vacuous: the backend's own modules fail them."""
    found = {m for m, path in modules()
             if in_backend(m) and RULE_SYNTAX.search(open(path).read())}
    assert {"iptables.render", "iptables.parse"} <= found
    seam = dict(modules())["rules"]
    assert ("iptables.backend", "backend") in set(imported(seam, "rules", where=True))
