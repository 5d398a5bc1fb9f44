"""Where jails live and how a dead run's leftovers are found and reclaimed.

Each jail has a folder `<root>/<id>/` (the mount point of its root: a tmpfs that exists
only in the jailed process's mount namespace) and a state file `<root>/<id>.json` naming
the pid that owns it (with its start time, so a reused pid does not count), its cgroup
folders and the vsock sockets made for it. The next start removes what a dead owner left.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil

from kvmvm.procfs import start_time  # noqa: F401 (also used as state.start_time)
from kvmvm.record import Factory, record


def jail_root() -> str:
    """$KVMVM_JAIL_ROOT, else /run/kvmvm/jail (root) or $KVMVM_HOME/jail."""
    env = os.environ.get("KVMVM_JAIL_ROOT")
    if env:
        return env
    if os.geteuid() == 0:
        return "/run/kvmvm/jail"
    from kvmvm.image.cache import kvmvm_home

    return os.path.join(str(kvmvm_home()), "jail")


def new_id() -> str:
    return secrets.token_hex(6)




@record
class JailState:
    id: str
    pid: int
    started: int
    cgroups: list = Factory(list)
    sockets: list = Factory(list)

    def path(self, root: str) -> str:
        return os.path.join(root, f"{self.id}.json")

    def save(self, root: str) -> None:
        tmp = self.path(root) + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.asdict(), f)
        os.replace(tmp, self.path(root))

    def alive(self) -> bool:
        return start_time(self.pid) == self.started


def cleanup(root: str, st: JailState) -> None:
    """Remove everything of one jail: sockets, cgroups, its folder, its state file."""
    from kvmvm.jail.cgroup import Cgroup

    for s in st.sockets:
        try:
            os.unlink(s)
        except FileNotFoundError:
            pass
        except OSError:
            pass
    Cgroup(st.id, st.cgroups).remove()
    d = os.path.join(root, st.id)
    if os.path.isdir(d):
        try:
            os.rmdir(d)     # empty: the tmpfs root lived in the jail's own mount namespace
        except OSError:
            shutil.rmtree(d, ignore_errors=True)
    try:
        os.unlink(st.path(root))
    except FileNotFoundError:
        pass


def reclaim(root: str) -> list[str]:
    """Clean up after jails whose owner died (kill -9, power loss); the ids reclaimed."""
    done = []
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return done
    for n in names:
        if not n.endswith(".json"):
            continue
        try:
            with open(os.path.join(root, n)) as f:
                st = JailState(**json.load(f))
        except (OSError, ValueError, TypeError):
            continue
        if not st.alive():
            cleanup(root, st)
            done.append(st.id)
    return done
