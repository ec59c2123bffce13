"""Install step: the hookscript as a snippet PVE can run (local:snippets/pvenat.py, in the
folder storage local's path and content-dirs name), and the 'snippets' content type on
storage local, keeping its other types."""

import os

from ..context import HOOKSCRIPT, SNIPPET, snippet
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
    PVE refuses to start a guest whose hookscript is missing. The snippet itself stays
    while any other guest of the cluster names it (below)."""
    out = []
    attached = [g for g in (env.pve.guest(info.vmid, info.kind) for info in env.pve.guests())
                if g.config.get("hookscript") == HOOKSCRIPT]
    if attached:
        out.append(Action(f"detach the hookscript from guests "
                          f"{', '.join(str(g.vmid) for g in attached)}",
                          *[Do(f"pvesh set /nodes/{g.node}/{g.kind}/{g.vmid}/config "
                               "-delete hookscript", lambda g=g: env.pve.set_config(
                                   env.pve.guest(g.vmid, g.kind), delete="hookscript"))
                            for g in attached]))
    path = _path(env, env.record.snippet or None)
    if env.system.exists(path):
        users = snippet_users(env, {g.vmid for g in attached})
        if users:
            env.warnings.append(
                f"kept the hookscript {path}: {users} still name it, and PVE refuses to "
                "start a guest whose hookscript is missing (at its start, a migration or HA "
                "recovery to this node, a snapshot rollback); without pvenat it starts "
                "them without forwards. Remove it once no guest of the cluster names it")
        else:
            out.append(Action(f"remove the hookscript ({path})", RemoveFile(path),
                              remember={"snippet": ""}))
    if env.record.snippets_content:
        content = [c for c in env.pve.storage(STORAGE).get("content", "").split(",")
                   if c and c != "snippets"]
        out.append(Action(f"stop storage '{STORAGE}' holding snippets",
                          _set_content(env, content), remember={"snippets_content": False}))
    return out


def snippet_users(env, detached: set) -> str:
    """Who else names the hookscript, in words ("" for nobody): a guest of any node, in
    its current config, pending changes or a snapshot (a rollback brings the hookscript
    back: pve-guest-common PVE/AbstractConfig.pm snapshot_rollback, then
    GuestHelpers.pm check_hookscript at the start). ``detached``: this node's guests
    whose current config loses it first. A cluster filesystem that shows no guest at all
    (pve-cluster down: /etc/pve is an empty folder) proves nothing: that keeps it too."""
    if not env.pve.cluster_readable():
        return (f"the cluster filesystem ({env.host.pve.config_dir}) shows no node, so "
                "guests that may")
    node, users = env.pve.node, []
    for gf in env.pve.cluster():
        for where, config in gf.configs():
            if config.get("hookscript") != HOOKSCRIPT or (
                    where == "current" and gf.node == node and gf.vmid in detached):
                continue
            detail = [] if gf.node == node else [f"on {gf.node}"]
            detail += [] if where == "current" else [where]
            users.append(f"{gf.vmid}" + (f" ({', '.join(detail)})" if detail else ""))
    return f"guests {', '.join(users)}" if users else ""


def _path(env, recorded=None) -> str:
    """The snippet's file: where install put it, else where storage local says now
    (PVE's default when the storage cannot be read)."""
    if recorded:
        return env.system.path(recorded.lstrip("/"))
    try:
        return snippet(env.pve, env.system.root)
    except PvenatError:
        return env.system.path(SNIPPET.lstrip("/"))


def _snippet(env):
    source = next((p for p in SOURCES if os.path.exists(p)), None)
    if source is None:
        raise PvenatError("host", "the hookscript is missing from /usr/share/pvenat; "
                          "reinstall the pvenat package")
    try:
        path = snippet(env.pve, env.system.root)
    except PvenatError as e:
        path = _path(env)
        env.warnings.append(f"storage '{STORAGE}' cannot be read ({e.message}); the "
                            f"hookscript went to {path}, where PVE keeps snippets by default")
    new, old = env.system.read(source), env.system.read(path)
    host_path = "/" + os.path.relpath(path, env.system.root)
    if old == new:
        return None
    return Action(f"install the hookscript as {path}", WriteFile(path, new, old, mode=0o755),
                  remember={"snippet": host_path})


def _content(env):
    """The 'snippets' content type on storage local shows the hookscript in the GUI and
    lets PVE accept it in a guest's options; PVE runs it without (PVE::Storage::path does
    not check content types), so this step never fails an install."""
    try:
        content = [c for c in env.pve.storage(STORAGE).get("content", "").split(",") if c]
    except PvenatError as e:
        env.warnings.append(f"storage '{STORAGE}' left as it is ({e.message}); the hookscript "
                            "runs without its 'snippets' content type")
        return None
    if "snippets" in content:
        return None
    return Action(f"let storage '{STORAGE}' hold snippets (keeping its other content types)",
                  _set_content(env, content + ["snippets"]), remember={"snippets_content": True})


def _set_content(env, content):
    return Do(f"pvesh set /storage/{STORAGE} --content {','.join(content)}",
              lambda: env.pve.set_storage_content(STORAGE, content))
