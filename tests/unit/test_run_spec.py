"""`kvmvm run`'s rules without a VM: image config + flags, sizes, run directories."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from kvmvm.agent import spec
from kvmvm.agent.rundir import RunDir, reclaim
from kvmvm.errors import ConfigError

CONFIG = {"Entrypoint": ["/bin/entry"], "Cmd": ["default", "args"], "Env": ["PATH=/img/bin", "A=1"],
          "WorkingDir": "/srv", "User": "app"}


def test_image_config_is_honoured():
    p = spec.process(CONFIG, [], hostname="h")
    assert p["argv"] == ["/bin/entry", "default", "args"]
    assert p["cwd"] == "/srv" and p["user"] == "app"
    assert "PATH=/img/bin" in p["env"] and "A=1" in p["env"] and "HOSTNAME=h" in p["env"]


def test_command_replaces_cmd_and_flags_override():
    p = spec.process(CONFIG, ["x", "y"], env=["A=2", "B=3"], workdir="/tmp", user="0:0", tty=True)
    assert p["argv"] == ["/bin/entry", "x", "y"]
    assert p["cwd"] == "/tmp" and p["user"] == "0:0"
    env = dict(kv.split("=", 1) for kv in p["env"])
    assert env["A"] == "2" and env["B"] == "3" and env["TERM"] == "xterm"


def test_entrypoint_flag_drops_the_image_cmd():
    assert spec.process(CONFIG, [], entrypoint="/bin/sh")["argv"] == ["/bin/sh"]
    assert spec.process(CONFIG, ["-c", "true"], entrypoint="/bin/sh")["argv"] == ["/bin/sh", "-c", "true"]
    assert spec.process(CONFIG, [], entrypoint='["/bin/sh", "-c", "echo hi"]')["argv"] == ["/bin/sh", "-c", "echo hi"]
    with pytest.raises(ConfigError, match="JSON array"):
        spec.process(CONFIG, [], entrypoint='["/bin/sh", 1]')


def test_no_command_at_all_is_an_error():
    with pytest.raises(ConfigError, match="no command"):
        spec.process({}, [])


def test_env_file_and_host_passthrough(tmp_path, monkeypatch):
    f = tmp_path / "env"
    f.write_text("# comment\n\nX=1\nFROM_HOST\nMISSING_ON_HOST\nY=a=b\n")
    monkeypatch.setenv("FROM_HOST", "yes")
    monkeypatch.delenv("MISSING_ON_HOST", raising=False)
    env = dict(kv.split("=", 1) for kv in spec.process({}, ["true"], env_files=[str(f)], env=["X=2"])["env"])
    assert env["X"] == "2" and env["FROM_HOST"] == "yes" and env["Y"] == "a=b" and "MISSING_ON_HOST" not in env
    with pytest.raises(ConfigError, match="--env-file"):
        spec.read_env_file(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        spec.env_arg("=x")


@pytest.mark.parametrize("text,mib", [("512m", 512), ("2g", 2048), ("2G", 2048), ("65536k", 64),
                                      ("1.5g", 1536), ("134217728", 128), ("256MiB", 256), ("256mb", 256)])
def test_memory_sizes(text, mib):
    assert spec.parse_memory(text) == mib


@pytest.mark.parametrize("text", ["", "lots", "12x", "-5m", "1m", "63m"])
def test_bad_memory_sizes(text):
    with pytest.raises(ConfigError, match="--memory"):
        spec.parse_memory(text)


def test_cpus_and_timeout():
    assert spec.parse_cpus("1.5") == 2 and spec.parse_cpus("4") == 4
    for bad in ("0", "-1", "x", "nan", "65"):
        with pytest.raises(ConfigError, match="--cpus"):
            spec.parse_cpus(bad)
    assert spec.parse_timeout("2.5") == 2.5 and spec.parse_timeout(None) is None
    with pytest.raises(ConfigError, match="--timeout"):
        spec.parse_timeout("0")


def test_run_dir_is_removed_on_close(tmp_path):
    with RunDir(root=tmp_path) as rd:
        assert rd.path.is_dir() and (rd.path / "lock").read_text().strip() == str(os.getpid())
        assert reclaim(tmp_path) == []          # alive: left alone
    assert list(tmp_path.iterdir()) == [] or [p.name for p in tmp_path.iterdir()] == [".names.lock"]


def test_names_are_unique_and_checked(tmp_path):
    with RunDir("web", root=tmp_path):
        with pytest.raises(ConfigError, match="already in use"):
            RunDir("web", root=tmp_path)
    with RunDir("web", root=tmp_path):
        pass
    with pytest.raises(ConfigError, match="--name"):
        RunDir("bad/name", root=tmp_path)


def test_a_killed_run_is_reclaimed_with_its_helpers(tmp_path):
    """kill -9 of the owner: the next start removes the directory and ends recorded helpers."""
    code = f"""
import subprocess, sys, time
from pathlib import Path
from kvmvm.agent.rundir import RunDir
rd = RunDir(root=Path({str(tmp_path)!r}))
helper = subprocess.Popen(["sleep", "300"])
rd.add_pid(helper.pid)
print(rd.path, helper.pid, flush=True)
time.sleep(300)
"""
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    path, helper = owner.stdout.readline().split()
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    assert os.path.isdir(path) and os.path.exists(f"/proc/{helper}")
    assert reclaim(tmp_path) == [path]
    assert not os.path.exists(path)
    for _ in range(50):
        st = open(f"/proc/{helper}/stat").read().split()[2] if os.path.exists(f"/proc/{helper}") else "gone"
        if st in ("Z", "gone"):
            break
        time.sleep(0.05)
    assert st in ("Z", "gone")


def test_a_run_directory_being_created_is_left_alone(tmp_path):
    """A lock file with no pid yet: another thread's RunDir between creating its lock file
    and locking it. Reclaiming it then would take the directory from under that run."""
    d = tmp_path / "0123456789ab"
    d.mkdir()
    (d / "lock").touch()
    assert reclaim(tmp_path) == [] and d.is_dir()
    old = time.time() - 120             # ... unless it has been so for a minute: a dead one
    os.utime(d, (old, old))
    assert reclaim(tmp_path) == [str(d)] and not d.exists()


def test_run_directories_made_by_many_threads_at_once_all_stay(tmp_path):
    """Every RunDir reclaims the dead ones as it starts: none may take a live one."""
    made, errors = [], []

    def make():
        try:
            for _ in range(40):
                made.append(RunDir(root=tmp_path))
        except Exception as e:  # noqa: BLE001 - asserted below
            errors.append(repr(e))

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors[:3]
        assert all(rd.path.is_dir() and rd.file("lock").exists() for rd in made)
    finally:
        for rd in made:
            rd.close()


def _kvmvm_run(*args, env=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "kvmvm", "run", *args], capture_output=True, text=True,
                          timeout=60, env=e)


@pytest.mark.parametrize("args,why", [
    (["--memory", "lots", "img", "true"], "--memory 'lots': not a size"),
    (["--cpus", "0", "img", "true"], "--cpus 0"),
    (["--net", "bridge", "img", "true"], "--net 'bridge'"),
    (["-p", "8080:80", "img", "true"], "-p needs --net user"),
    (["--no-such-flag", "img"], "No such option"),
    ([], "Missing argument"),
])
def test_bad_flags_exit_125_with_one_line(args, why):
    r = _kvmvm_run(*args)
    assert r.returncode == 125, r.stderr
    assert why in r.stderr and len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("kvmvm: ")


@pytest.mark.skipif(not os.path.exists("/sys/module/kvm_pvm"), reason="only PVM hosts refuse Linux guests")
def test_pvm_host_refuses_in_one_line():
    r = _kvmvm_run("alpine", "true")
    assert r.returncode == 125 and "PVM" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_agent_initramfs_holds_the_agent_as_init(tmp_path):
    from kvmvm.agent import initramfs
    from kvmvm.image.initramfs import read_newc

    path = initramfs.build(tmp_path)
    ents = {e.path: e for e in read_newc(path.read_bytes())}
    assert ents["init"].data == initramfs.agent_binary().read_bytes() and ents["init"].mode == 0o755
    assert ents["dev/console"].kind == "c" and ents["dev/console"].rdev == (5, 1)
    assert initramfs.build(tmp_path) == path          # cached by the agent's bytes


def test_container_vm_config_and_setup_message(tmp_path):
    """The disks the VM gets and how the agent is told to find them (by virtio serial)."""
    from kvmvm.agent.guest import ContainerVm, Mount

    with RunDir(root=tmp_path) as rd:
        vm = ContainerVm(rd, rootfs=tmp_path / "root.erofs", rootfs_type="erofs", memory_mib=256, cpus=2,
                         mounts=[Mount("/v/data.ext4", "ext4", "/data"), Mount("/p/in.erofs", "erofs", "/in", True),
                                 Mount("/v/db.ext4", "ext4", "/db", direct=True)],
                         nets=["user,tcp=8080:80"], cmdline_extra="ip=dhcp", readonly=True, hostname="web")
        cfg = vm._machine_config("/k/vmlinux", "/k/initrd")
        assert cfg.drives == [f"{tmp_path}/root.erofs,ro,id=kvmvm-root", "/v/data.ext4,id=kvmvm-m0",
                              "/p/in.erofs,ro,id=kvmvm-m1", "/v/db.ext4,direct,id=kvmvm-m2"]
        assert cfg.vsock == f"cid=3,uds={rd.path}/v" and cfg.nets == ["user,tcp=8080:80"]
        assert cfg.cmdline.endswith(" ip=dhcp") and cfg.memory_mib == 256 and cfg.cpus == 2
        msg = vm.setup_message()
        assert msg["rootfs"] == {"serial": "kvmvm-root", "type": "erofs"} and msg["readonly"] is True
        assert msg["mounts"] == [{"serial": "kvmvm-m0", "type": "ext4", "path": "/data", "ro": False},
                                 {"serial": "kvmvm-m1", "type": "erofs", "path": "/in", "ro": True},
                                 {"serial": "kvmvm-m2", "type": "ext4", "path": "/db", "ro": False}]
        assert msg["hostname"] == "web" and "resolv" not in msg


@pytest.mark.parametrize("spec,option", [
    ("8080:80", "tcp=8080:80"),
    ("5353:53/udp", "udp=5353:53"),
    ("127.0.0.1:8080:80", "tcp=127.0.0.1/8080:80"),
    ("[::1]:8080:80/tcp", "tcp=::1/8080:80"),
    ("8000-8010:9000-9010", "tcp=8000-8010:9000-9010"),
])
def test_publish_takes_podmans_forms(spec, option):
    from kvmvm.cli.run import publish_option
    from kvmvm.devices.virtio import net

    assert publish_option(spec) == option
    assert net.parse(f"user,{option}").tcp + net.parse(f"user,{option}").udp == (option.split("=", 1)[1],)


@pytest.mark.parametrize("spec,why", [
    ("8080:80/sctp", "tcp or udp"),
    ("127.0.0.1::80", "give both ports"),
    ("[::1:8080:80", "[IPV6]:HOST:GUEST"),
])
def test_publish_refuses_what_it_cannot_do(spec, why):
    from kvmvm.cli.run import publish_option
    from kvmvm.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(why)):
        publish_option(spec)


def test_console_hint_puts_a_kernel_oops_first(tmp_path):
    from kvmvm.agent.guest import console_hint

    log = tmp_path / "console.log"
    assert console_hint(log) == ""                      # no log at all
    log.write_text("boot\n\n[ 1.0] BUG: unable to handle page fault\n[ 1.0] RIP: 0010:f+0x1\n"
                   " trace\n[ 1.1] Kernel panic - not syncing: Fatal exception\n</ENTRY_TRAMPOLINE>\n")
    assert console_hint(log) == ("; console: [ 1.0] BUG: unable to handle page fault | [ 1.0] RIP: 0010:f+0x1 | "
                                 "[ 1.1] Kernel panic - not syncing: Fatal exception | </ENTRY_TRAMPOLINE>")
    log.write_text("a\nb\nc\n")
    assert console_hint(log, 2) == "; console: b | c"
