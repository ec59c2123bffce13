"""YAML for people: no aliases, no duplicate keys, no implicit types, line numbers kept.

Everything is composed into nodes and never constructed into Python objects by PyYAML:
scalars stay strings (so ``2222:22`` is not the sexagesimal integer 133342 and ``on`` is
not ``True``), and callers read values with the line they came from.

PyYAML is imported on the first parse only: importing it costs a good part of a hook
for a guest pvenat does not manage.
"""

from typing import NamedTuple

from .errors import PvenatError


class Scalar(NamedTuple):
    value: str
    line: int


class Seq(NamedTuple):
    items: tuple
    line: int


class Map(NamedTuple):
    items: dict  # str -> node
    keys: dict  # str -> line of the key
    line: int


def load(text: str, at, code: str, first_line: int = 1):
    """Parse one YAML document into Scalar/Seq/Map nodes; None when empty.

    ``at(line)`` names a place in errors ("guest 101, Notes line 4"; line None: the
    source as a whole);
    ``code`` is the PvenatError code for problems; ``first_line`` is the line number of
    the text's first line in that source.
    """
    import yaml

    offset = first_line - 1
    # libyaml's composer when the C extension is there (Debian's python3-yaml has it).
    loader = getattr(yaml, "CBaseLoader", yaml.BaseLoader)
    try:
        node = loader(text).get_single_node()
    except yaml.reader.ReaderError as e:  # a character YAML does not take
        line = text[:e.position].count("\n") + 1 + offset
        raise PvenatError(code, f"{at(line)}: invalid YAML: character "
                          f"{chr(e.character)!r} is not allowed") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = at(mark.line + 1 + offset if mark else None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if mark and "\t" in (text.split("\n")[mark.line:mark.line + 1] or [""])[0]:
            raise PvenatError(code, f"{where}: a tab; YAML indents with spaces only: put "
                              "spaces where the tab is") from None
        context, cmark = getattr(e, "context", None), getattr(e, "context_mark", None)
        if context and cmark:
            problem = f"{context} that starts on line {cmark.line + 1 + offset}: {problem}"
        raise PvenatError(code, f"{where}: invalid YAML: {problem}") from None
    if node is None:
        return None
    return _convert(node, at, code, offset, set(), 0)


MAX_DEPTH = 16  # pvenat's own formats nest three levels deep


def _convert(node, at, code, offset, seen, depth):
    line = node.start_mark.line + 1 + offset
    if depth > MAX_DEPTH:
        raise PvenatError(code, f"{at(line)}: nested more than {MAX_DEPTH} levels "
                          "deep; pvenat's keys are not")
    # An alias is the same node object met twice; refusing it also defuses alias bombs.
    if id(node) in seen:
        raise PvenatError(code, f"{at(line)}: YAML anchors and aliases (&name, "
                          "*name) are not allowed; write the value out")
    seen.add(id(node))
    if node.id == "scalar":  # PyYAML's ScalarNode, SequenceNode, MappingNode
        return Scalar(node.value, line)
    if node.id == "sequence":
        return Seq(tuple(_convert(n, at, code, offset, seen, depth + 1)
                         for n in node.value), line)
    items, keys = {}, {}
    for knode, vnode in node.value:
        kline = knode.start_mark.line + 1 + offset
        if knode.id != "scalar":
            raise PvenatError(code, f"{at(kline)}: a key must be a plain word")
        if knode.value in items:
            raise PvenatError(
                code, f"{at(kline)}: key {knode.value!r} appears twice "
                f"(first on line {keys[knode.value]}); keep one")
        items[knode.value] = _convert(vnode, at, code, offset, seen, depth + 1)
        keys[knode.value] = kline
    return Map(items, keys, line)


def to_plain(node):
    """A node as JSON-ready lists, so that a parse can be cached; from_plain undoes it."""
    if isinstance(node, Scalar):
        return ["s", node.value, node.line]
    if isinstance(node, Seq):
        return ["q", [to_plain(n) for n in node.items], node.line]
    return ["m", {k: to_plain(v) for k, v in node.items.items()}, node.keys, node.line]


def from_plain(plain):
    kind = plain[0]
    if kind == "s":
        return Scalar(plain[1], plain[2])
    if kind == "q":
        return Seq(tuple(from_plain(p) for p in plain[1]), plain[2])
    return Map({k: from_plain(v) for k, v in plain[1].items()}, plain[2], plain[3])
