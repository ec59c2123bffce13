"""An install step's changes as data: what --dry-run prints is what a run does.

An Action is one line for the admin ("enable IPv4 forwarding ...") and the changes that
make it up. Each change describes itself (a diff, a command) and applies itself, so the
text of a dry run and the real commands are written once.
"""

import difflib
import shlex


class WriteFile:
    def __init__(self, path: str, new: str, old=None, mode=None):
        self.path, self.new, self.old, self.mode = path, new, old, mode

    def describe(self) -> str:
        return diff(self.path, self.old, self.new)

    def apply(self, system):
        system.write(self.path, self.new, self.mode)


class RemoveFile:
    def __init__(self, path: str):
        self.path = path

    def describe(self) -> str:
        return f"rm {self.path}"

    def apply(self, system):
        system.remove(self.path)


class Run:
    def __init__(self, *argv):
        self.argv = argv

    def describe(self) -> str:
        return shlex.join(self.argv)

    def apply(self, system):
        system.run(*self.argv)


class Do:
    """Anything else: the text says what it does, ``fn`` does it."""

    def __init__(self, text: str, fn):
        self.text, self.fn = text, fn

    def describe(self) -> str:
        return self.text

    def apply(self, system):
        self.fn()


class Action:
    def __init__(self, what: str, *changes, remember=None):
        self.what = what
        self.changes = changes
        self.remember = remember or {}  # facts for the install record once applied

    def detail(self) -> str:
        return "\n".join(filter(None, (c.describe() for c in self.changes)))

    def apply(self, system, record):
        for change in self.changes:
            change.apply(system)
        if self.remember:
            record.update(system, **self.remember)


def diff(path: str, old, new) -> str:
    return "".join(difflib.unified_diff((old or "").splitlines(True),
                                        (new or "").splitlines(True),
                                        f"{path} (now)", f"{path} (after)"))
