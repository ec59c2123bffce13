"""The import layers hold: base -> model -> adapters -> commands. A module imports from
its own layer or the ones below, never from above: the model stays pure, and a new
backend (nftables, say) replaces adapters without touching the model."""

import ast
import os

import pvehook

LAYERS = [
    ("base", {"__init__", "errors", "files", "logs", "ports", "yamlstrict"}),
    ("model", {"config", "spec", "plan", "ruleset", "leases"}),
    ("adapters", {"netfilter", "index", "plancache", "pve", "pveapi", "pvesh", "pveconf",
                  "hostnet",
                  "dhcp"}),
    ("commands", {"context", "hook", "sync", "listing", "status", "cli", "__main__", "attach",
                  "install"}),
]
PACKAGE = os.path.dirname(pvehook.__file__)


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


def imported(path: str, module: str):
    """pvehook modules imported by the file, relative imports resolved; a name imported
    from a package that is not a module counts as the package's __init__."""
    known = {m for m, _ in modules()}
    package = module.split(".")[:-1] if not path.endswith("__init__.py") else \
        module.split(".")
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            if node.module:
                yield ".".join(base + [node.module])
                continue
            for alias in node.names:
                target = ".".join(base + [alias.name])
                yield target if target in known else ".".join(base) or "__init__"


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
