"""Install step, with --token: a read-only PVE API token for the https backend, made with
pveum as root on the node, its secret stored root-only."""

import json
import re

from ..errors import PvenatError
from .actions import Action, Do, RemoveFile, Run, WriteFile


def install(env):
    if not env.token:
        return None
    s, system = env.host.pve, env.system
    tokenid = f"{s.user}!{s.token_name}"
    have_file = system.exists(s.token_file)
    if have_file and s.backend == "https":
        return None
    config = system.read(env.config_path) or ""
    if re.search(r"(?m)^pve:", config) and s.backend != "https":
        raise PvenatError("config", f"{env.config_path} has a 'pve:' section with backend "
                          f"{s.backend}; set 'backend: https' there, then run pvenat "
                          "install --token again")
    changes = []
    users = json.loads(system.run("pveum", "user", "list", "--output-format", "json"))
    if s.user not in {u.get("userid") for u in users}:
        def add_user():
            system.run("pveum", "user", "add", s.user, "--comment",
                       "pvenat hookscript, read-only")
            env.record.update(system, user=s.user)
        changes.append(Do(f"pveum user add {s.user}", add_user))
    if not have_file:
        def add_token():
            # A token's secret cannot be read back: a lost file means a new token.
            try:
                system.run("pveum", "user", "token", "remove", s.user, s.token_name)
            except PvenatError:
                pass  # there was none
            out = system.run("pveum", "user", "token", "add", s.user, s.token_name,
                             "--privsep", "1", "--output-format", "json")
            system.write_secret(s.token_file, json.loads(out)["value"] + "\n")
            env.record.update(system, token=tokenid)
        changes.append(Do(f"pveum user token add {s.user} {s.token_name} --privsep 1 > "
                          f"{s.token_file}", add_token))
    changes.append(Run("pveum", "acl", "modify", "/vms", "--tokens", tokenid, "--roles",
                       "PVEAuditor"))
    if s.backend != "https":
        changes.append(WriteFile(env.config_path, config + (
            "" if config.endswith("\n") or not config else "\n") +
            "# added by pvenat install --token\npve:\n  backend: https\n"
            f"  token_file: {s.token_file}\n", config))
    return Action(f"create the read-only API token {tokenid} for the https backend",
                  *changes)


def uninstall(env):
    record, system = env.record, env.system
    out = []
    if record.token:
        user, name = record.token.split("!")
        changes = [Run("pveum", "user", "token", "remove", user, name)]
        if system.exists(env.host.pve.token_file):
            changes.append(RemoveFile(env.host.pve.token_file))
        out.append(Action(f"remove the API token {record.token}", *changes,
                          remember={"token": ""}))
    if record.user:
        out.append(Action(f"remove the PVE user {record.user}",
                          Run("pveum", "user", "delete", record.user), remember={"user": ""}))
    return out
