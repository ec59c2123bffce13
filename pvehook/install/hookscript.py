"""Install step: the hookscript as a snippet PVE can run (local:snippets/pvenat.py), and
the 'snippets' content type on storage local, keeping its other types."""

import os

from ..context import HOOKSCRIPT, SNIPPET
from ..errors import PvenatError
from .actions import Action, Do, RemoveFile, WriteFile

# The package's copy, else this work tree's (running from a checkout).
SOURCES = ("/usr/share/pvenat/pvenat.py",
           os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
               os.path.abspath(__file__)))), "hookscripts", "pvenat.py"))
STORAGE = "local"


def install(env):
    return [_snippet(env), _content(env)]


def uninstall(env):
    """The guests here that name the hookscript lose it first (as root, through pvesh):
    PVE refuses to start a guest whose hookscript is missing."""
    out = []
    node = env.host.pve.node_name()
    attached = [env.configs.guest(node, info.vmid, info.kind) for info in
                env.configs.guests(node)]
    attached = [g for g in attached if g.config.get("hookscript") == HOOKSCRIPT]
    if attached:
        out.append(Action(f"detach the hookscript from guests "
                          f"{', '.join(str(g.vmid) for g in attached)}",
                          *[Do(f"pvesh set /nodes/{node}/{g.kind}/{g.vmid}/config "
                               "-delete hookscript",
                               lambda g=g: env.api.set_config(node, g, delete="hookscript"))
                            for g in attached]))
    path = env.system.path(SNIPPET)
    if env.system.exists(path):
        out.append(Action(f"remove the hookscript ({path})", RemoveFile(path)))
    if env.record.snippets_content:
        content = [c for c in env.api.storage_content(STORAGE) if c != "snippets"]
        out.append(Action(f"stop storage '{STORAGE}' holding snippets",
                          _set_content(env, content), remember={"snippets_content": False}))
    return out


def _snippet(env):
    source = next((p for p in SOURCES if os.path.exists(p)), None)
    if source is None:
        raise PvenatError("host", "the hookscript is missing from /usr/share/pvenat; "
                          "reinstall the pvenat package")
    path = env.system.path(SNIPPET)
    new, old = env.system.read(source), env.system.read(path)
    if old == new:
        return None
    return Action(f"install the hookscript as {path}", WriteFile(path, new, old, mode=0o755))


def _content(env):
    """The 'snippets' content type on storage local shows the hookscript in the GUI and
    lets PVE accept it in a guest's options; PVE runs it without (PVE::Storage::path does
    not check content types), so this step never fails an install."""
    try:
        content = env.api.storage_content(STORAGE)
    except PvenatError as e:
        env.warnings.append(f"storage '{STORAGE}' left as it is ({e.message}); the hookscript "
                            "runs without its 'snippets' content type")
        return None
    if "snippets" in content:
        return None
    return Action(f"let storage '{STORAGE}' hold snippets (keeping its other content types)",
                  _set_content(env, content + ["snippets"]), remember={"snippets_content": True})


def _set_content(env, content):
    joined = ",".join(content)
    return Do(f"pvesh set /storage/{STORAGE} --content {joined}",
              lambda: env.api.set_storage_content(STORAGE, joined))
