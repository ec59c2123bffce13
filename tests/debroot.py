"""Debian roots of their own for the tests that must not touch this machine's packages:
the package test (tests/package-test) and the fresh-machine test (tests/fresh-root).

A root is made by mmdebstrap from a package list alone and kept in PVENAT_CACHE (.cache/)
as a tarball, named by that list; each run extracts it anew, so nothing a run did is ever
carried into the next one.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile

from shared import CACHE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sh(*argv, **kwargs):
    print("+", " ".join(argv), flush=True)
    return subprocess.run(argv, check=True, **kwargs)


def tarball(suite: str, packages: list, variant: str = "apt", keep_lists=False) -> str:
    """A tarball of a Debian SUITE root of VARIANT with PACKAGES, made once and kept.
    ``keep_lists``: apt's package lists stay in it, so that apt-get install works in the
    root without an apt-get update (and without the network while its .debs are cached)."""
    recipe = f"{suite} {variant} {' '.join(packages)} lists={keep_lists}"
    name = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    path = os.path.join(CACHE, f"debroot-{suite}-{name}.tar")
    if os.path.exists(path):
        return path
    os.makedirs(CACHE, exist_ok=True)
    skip = ["--skip=cleanup/apt/lists"] if keep_lists else []
    sh("mmdebstrap", "--quiet", f"--variant={variant}", "--format=tar", *skip,
       *([f"--include={','.join(packages)}"] if packages else []), suite, path + ".new")
    os.replace(path + ".new", path)
    return path


class Root:
    """The extracted root with /proc, /sys, /dev, /run and /tmp mounted; a mount point
    itself, so that ip netns exec can make its mounts private in it. ``archives``: a folder
    of this machine's bound over the root's /var/cache/apt/archives, apt's download cache
    kept from run to run."""

    def __init__(self, tarball: str, archives: str = None):
        self.path = tempfile.mkdtemp(prefix="pvenat-root-", dir="/var/tmp")
        self.mounts = []
        try:
            sh("tar", "-xf", tarball, "-C", self.path)
            self.mount("--bind", self.path, self.path)
            self.mount("-t", "proc", "proc", f"{self.path}/proc")
            self.mount("-t", "sysfs", "sysfs", f"{self.path}/sys")
            self.mount("--rbind", "/dev", f"{self.path}/dev")
            self.mount("-t", "tmpfs", "tmpfs", f"{self.path}/run")
            self.mount("-t", "tmpfs", "tmpfs", f"{self.path}/tmp")
            if archives:
                os.makedirs(os.path.join(archives, "partial"), exist_ok=True)
                self.mount("--bind", archives, f"{self.path}/var/cache/apt/archives")
        except BaseException:
            self.close()
            raise

    def mount(self, *args):
        sh("mount", *args)
        self.mounts.append(args[-1])

    def run(self, command: str, **env):
        """A shell command inside the root, as root, with Debian's PATH."""
        environment = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8",
                       "HOME": "/root", "DEBIAN_FRONTEND": "noninteractive", **env}
        sh("chroot", self.path, "sh", "-ec", command, env=environment)

    def copy_tree(self, target: str):
        """The work tree as git knows it (tracked and new files), into the root."""
        os.makedirs(f"{self.path}{target}", exist_ok=True)
        subprocess.run("git ls-files -co --exclude-standard -z | tar --null -T - -cf - | "
                       f"tar -xf - -C '{self.path}{target}'", shell=True, cwd=REPO,
                       check=True)

    def close(self):
        for path in reversed(self.mounts):
            subprocess.run(["umount", "-R", "-l", path])
        self.mounts = []
        shutil.rmtree(self.path, ignore_errors=True)
