"""The jailer's logic without namespaces: what is mapped where, the cgroup files written
(v1 and v2, over a fake cgroup folder), and which leftovers the next start reclaims."""
from __future__ import annotations

import os

import pytest

from kvmvm.jail import JailConfig, plan, state
from kvmvm.jail import cgroup as cgmod
from kvmvm.errors import ConfigError
from kvmvm.machine import MachineConfig


def test_plan_maps_user_paths_into_the_jail(tmp_path):
    k, i, d0, d1 = (tmp_path / n for n in ("vmlinux", "initrd", "a.img", "b.img"))
    for p in (k, i, d0, d1):
        p.write_bytes(b"x")
    (tmp_path / "s").mkdir()
    cfg = MachineConfig(kernel=str(k), initrd=str(i), drives=[f"{d0},id=x", f"{d1},ro"],
                        nets=["tap=t0"], vsock=f"cid=4,uds={tmp_path}/s/v.sock")
    jcfg, entries, sockets = plan(cfg)
    assert (jcfg.kernel, jcfg.initrd) == ("/boot/kernel", "/boot/initrd")
    assert jcfg.drives == ["/drives/0,id=x", "/drives/1,ro"]
    assert jcfg.vsock == "cid=4,uds=/vsock/v.sock"
    assert jcfg.nets == ["tap=t0"]
    got = {e.dst: (e.src, e.kind, e.ro) for e in entries}
    assert got == {
        "/dev/kvm": ("/dev/kvm", "dev", False), "/dev/urandom": ("/dev/urandom", "dev", False),
        "/boot/kernel": (str(k), "file", True), "/boot/initrd": (str(i), "file", True),
        "/drives/0": (str(d0), "file", False), "/drives/1": (str(d1), "file", True),
        "/dev/net/tun": ("/dev/net/tun", "dev", False), "/vsock": (str(tmp_path / "s"), "dir", False),
    }
    assert sockets == [f"{tmp_path}/s/v.sock"]
    assert cfg.kernel == str(k)     # the caller's config is left alone


def test_plan_refuses_missing_files(tmp_path):
    with pytest.raises(ConfigError, match="kernel image not found"):
        plan(MachineConfig(kernel=str(tmp_path / "none")))


def test_jail_config_checks():
    for kw, msg in [({"uid": 0}, "--jail-uid"), ({"gid": 2**32}, "--jail-gid"),
                    ({"pids": 1}, "--jail-pids"), ({"cpus": 0.0}, "--jail-cpu"),
                    ({"memory_mib": 1}, "--jail-memory"), ({"netns": "/nonexistent"}, "--jail-netns")]:
        with pytest.raises(ConfigError, match=msg):
            JailConfig(**kw).validate()


def fake_root(tmp_path, v2: bool):
    root = tmp_path / "cg"
    root.mkdir()
    if v2:
        (root / "cgroup.controllers").write_text("cpu memory pids\n")
        (root / "cgroup.subtree_control").write_text("")
    return root


def test_cgroup_v2_limits(tmp_path, monkeypatch):
    root = fake_root(tmp_path, v2=True)
    monkeypatch.setattr(cgmod, "ROOT", str(root))
    orig_makedirs = os.makedirs

    def makedirs(p, *a, **kw):      # a real cgroup folder comes with its control files
        orig_makedirs(p, *a, **kw)
        sc = os.path.join(p, "cgroup.subtree_control")
        if not os.path.exists(sc):
            open(sc, "w").close()
            open(os.path.join(p, "memory.swap.max"), "w").close()

    monkeypatch.setattr(cgmod.os, "makedirs", makedirs)
    cg = cgmod.Cgroup("kvmvm-x")
    assert cg.v2 and cg.paths == [f"{root}/kvmvm/kvmvm-x"]
    cg.create(384 << 20, 128, 2.0)
    p = root / "kvmvm" / "kvmvm-x"
    assert (root / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (root / "kvmvm" / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (p / "memory.max").read_text() == str(384 << 20)
    assert (p / "memory.swap.max").read_text() == "0"
    assert (p / "pids.max").read_text() == "128"
    assert (p / "cpu.max").read_text() == "200000 100000"


def test_cgroup_v1_limits(tmp_path, monkeypatch):
    root = fake_root(tmp_path, v2=False)
    monkeypatch.setattr(cgmod, "ROOT", str(root))
    monkeypatch.setattr(cgmod, "_own", lambda c: "/agent")
    cg = cgmod.Cgroup("kvmvm-y")
    assert not cg.v2
    assert cg.paths == [f"{root}/{c}/agent/kvmvm/kvmvm-y" for c in ("cpu", "memory", "pids")]
    cg.create(100 << 20, 64, 0.5)
    cpu, mem, pids = (tmp_path / "cg" / c / "agent" / "kvmvm" / "kvmvm-y" for c in ("cpu", "memory", "pids"))
    assert (mem / "memory.limit_in_bytes").read_text() == str(100 << 20)
    assert (pids / "pids.max").read_text() == "64"
    assert (cpu / "cpu.cfs_quota_us").read_text() == "50000"
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000"


def test_reclaim_removes_only_dead_owners(tmp_path):
    root = str(tmp_path)
    sock = tmp_path / "dead.sock"
    sock.write_text("")
    dead = state.JailState("dead", 2**22 + 12345, 1, [], [str(sock)])
    live = state.JailState("live", os.getpid(), state.start_time(os.getpid()), [], [])
    reused = state.JailState("reused", os.getpid(), 1, [], [])     # same pid, other start time
    for st in (dead, live, reused):
        st.save(root)
        os.mkdir(os.path.join(root, st.id))
    assert sorted(state.reclaim(root)) == ["dead", "reused"]
    assert sorted(os.listdir(root)) == ["live", "live.json"]
    assert not sock.exists()
