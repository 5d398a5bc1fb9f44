"""`kvmvm sandbox create|exec|cp|ls|rm|prune`: sandboxes for scripts and non-Python users.

Each sandbox lives in its own background kvmvm process (kvmvm/sandbox/server.py), found
through its state directory; no daemon. Exit status: 0 done (exec: the command's status);
1 failed (not found, the sandbox ended); 2 bad input; exec: 124 when the command timed out.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import click

from kvmvm.errors import ConfigError, KvmvmError, SandboxError, SandboxNotFound

CREATE_TIMEOUT_S = 600


def _dir(sid: str) -> Path:
    from kvmvm.sandbox.server import reclaim, state_root

    if not sid or "/" in sid or sid.startswith("."):
        raise ConfigError(f"bad sandbox id {sid!r}")
    reclaim()
    d = state_root() / sid
    if not (d / "sock").exists():
        raise SandboxNotFound(f"no sandbox {sid} (kvmvm sandbox ls lists them)")
    return d


def _call(sid: str, msg: dict, timeout: float | None = None) -> dict:
    from kvmvm.sandbox.server import request

    r = request(_dir(sid), msg, timeout)
    if not r.get("ok"):
        err = r.get("error") or "failed"
        kind = r.get("kind", "")
        if kind == "ConfigError":
            raise ConfigError(err)
        if kind in ("SandboxClosed", "SandboxTimeout"):
            raise SandboxNotFound(err)
        raise SandboxError(err)
    return r


def _env(pairs) -> dict:
    out = {}
    for e in pairs:
        if "=" not in e:
            raise ConfigError(f"--env {e!r}: expected NAME=VALUE")
        k, v = e.split("=", 1)
        out[k] = v
    return out


@click.group()
def cli():
    """Sandboxes for untrusted code: one microVM each, kept by a background kvmvm process."""


@cli.command()
@click.argument("image")
@click.option("--cpus", type=int, default=1, show_default=True)
@click.option("--memory", "memory_mib", type=int, default=512, show_default=True, help="MiB.")
@click.option("--timeout", type=float, default=300, show_default=True, help="Lifetime in seconds (0: none).")
@click.option("--network/--no-network", default=False, help="User-mode networking (off by default).")
@click.option("--env", "-e", multiple=True, help="NAME=VALUE for every command.")
@click.option("--cwd", default=None, help="Working directory of commands.")
@click.option("--user", default=None, help="User of commands.")
@click.option("--pids", type=int, default=None, help="Most tasks the guest may run.")
@click.option("--disk", "disk_mib", type=int, default=None,
              help="MiB: the writable layer is a scratch disk this big (default: a tmpfs in the VM's memory).")
@click.option("--cold", is_flag=True, help="Boot; do not restore from the warm snapshot.")
@click.option("--json", "as_json", is_flag=True)
def create(image, cpus, memory_mib, timeout, network, env, cwd, user, pids, disk_mib, cold, as_json):
    """Create a sandbox from IMAGE; prints its id."""
    from kvmvm.sandbox.server import reclaim, state_root

    spec = {"image": image, "cpus": cpus, "memory_mib": memory_mib, "timeout": timeout or None,
            "network": network, "envs": _env(env), "cwd": cwd, "user": user, "pids": pids, "disk_mib": disk_mib,
            "warm": not cold}
    reclaim()
    root = state_root()
    root.mkdir(parents=True, exist_ok=True)
    sid = "sb-" + secrets.token_hex(6)
    d = root / sid
    d.mkdir(mode=0o700)
    log = open(d / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "kvmvm.sandbox.server", str(d), json.dumps(spec)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                            start_new_session=True, close_fds=True)
    log.close()
    line = b""
    try:
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            if sel.select(CREATE_TIMEOUT_S):
                line = proc.stdout.readline()
    except KeyboardInterrupt:
        proc.terminate()
        raise
    finally:
        proc.stdout.close()
    try:
        r = json.loads(line) if line else {"ok": False, "error": "the sandbox process ended without a word"}
    except ValueError:
        r = {"ok": False, "error": "the sandbox process answered garbage"}
    if not r.get("ok"):
        if proc.poll() is None:
            proc.terminate()
        proc.wait(10)
        import shutil

        shutil.rmtree(d, ignore_errors=True)
        err = r.get("error", "failed")
        raise (ConfigError if r.get("kind") in ("ConfigError", "ImageNotFound") else SandboxError)(err)
    info = r["info"]
    if as_json:
        click.echo(json.dumps(info))
    else:
        click.echo(sid)


@cli.command(name="exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("sid")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--env", "-e", multiple=True)
@click.option("--cwd", default=None)
@click.option("--user", default=None)
@click.option("--timeout", type=float, default=None, help="Seconds; the command is killed after.")
@click.option("--stdin", "-i", "use_stdin", is_flag=True, help="Pass this process's stdin.")
@click.option("--json", "as_json", is_flag=True)
def exec_(sid, command, env, cwd, user, timeout, use_stdin, as_json):
    """Run COMMAND (argv; one argument: a /bin/sh -c string) in sandbox SID."""
    argv = list(command)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise ConfigError("exec: no command given")
    cmd = argv[0] if len(argv) == 1 else argv
    msg = {"op": "exec", "argv": cmd, "envs": _env(env), "cwd": cwd, "user": user, "timeout": timeout}
    if use_stdin:
        msg["stdin"] = base64.b64encode(sys.stdin.buffer.read()).decode()
    r = _call(sid, msg)
    out, err = base64.b64decode(r["stdout"]), base64.b64decode(r["stderr"])
    if as_json:
        click.echo(json.dumps({"stdout": out.decode("utf-8", "replace"), "stderr": err.decode("utf-8", "replace"),
                               "exit_code": r["exit_code"], "error": r.get("error"), "truncated": r.get("truncated"),
                               "timed_out": r.get("timed_out")}))
    else:
        sys.stdout.buffer.write(out)
        sys.stdout.flush()
        sys.stderr.buffer.write(err)
        if r.get("error"):
            sys.stderr.write(f"kvmvm: {r['error']}\n")
    if r.get("timed_out"):
        return 124
    return r["exit_code"]


def _split(spec: str):
    """ID:PATH -> (id, path); a host path -> (None, path)."""
    if ":" in spec and spec.startswith("sb-"):
        sid, path = spec.split(":", 1)
        return sid, path
    return None, spec


@cli.command()
@click.argument("src")
@click.argument("dst")
def cp(src, dst):
    """Copy a file: host -> sandbox (`cp FILE SID:PATH`) or back (`cp SID:PATH FILE`)."""
    (s_id, s_path), (d_id, d_path) = _split(src), _split(dst)
    if (s_id is None) == (d_id is None):
        raise ConfigError("cp: exactly one of SRC and DST is SID:PATH")
    if d_id is not None:
        try:
            data = sys.stdin.buffer.read() if s_path == "-" else Path(s_path).read_bytes()
        except OSError as e:
            raise ConfigError(f"cp: {s_path}: {e.strerror}") from None
        mode = 0o644 if s_path == "-" else os.stat(s_path).st_mode & 0o777
        _call(d_id, {"op": "put", "path": d_path, "data": base64.b64encode(data).decode(), "mode": mode})
    else:
        data = base64.b64decode(_call(s_id, {"op": "get", "path": s_path})["data"])
        if d_path == "-":
            sys.stdout.buffer.write(data)
        else:
            try:
                Path(d_path).write_bytes(data)
            except OSError as e:
                raise ConfigError(f"cp: {d_path}: {e.strerror}") from None


@cli.command()
@click.argument("target", required=False)
@click.option("--json", "as_json", is_flag=True)
def ls(target, as_json):
    """List sandboxes; with SID:PATH, the files of a directory in one."""
    from kvmvm.sandbox.server import reclaim, state_root

    if target:
        sid, path = _split(target)
        if sid is None:
            raise ConfigError(f"ls: {target!r} is not SID:PATH")
        entries = _call(sid, {"op": "ls", "path": path or "/"})["entries"]
        if as_json:
            click.echo(json.dumps(entries))
        else:
            for e in entries:
                click.echo(f"{e['type']:8} {e['size']:>10} {e['name']}")
        return
    reclaim()
    root = state_root()
    rows = []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            try:
                rows.append(json.loads((d / "info.json").read_text()))
            except (OSError, ValueError):
                continue
    if as_json:
        click.echo(json.dumps(rows))
        return
    click.echo(f"{'ID':16} {'IMAGE':14} {'CPUS':>4} {'MEMORY':>7} {'WARM':>5} PID")
    for r in rows:
        click.echo(f"{r['sandbox_id']:16} {r['image'][7:19]:14} {r['cpus']:>4} {r['memory_mib']:>6}M "
                   f"{str(r['warm']).lower():>5} {r['pid']}")


def _ended(pid: int | None) -> bool:
    """No process pid, or only its zombie (its parent, the `create` call, is gone)."""
    from kvmvm.procfs import ended

    return ended(pid)


@cli.command()
@click.argument("sids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every sandbox.")
def rm(sids, all_):
    """Kill sandboxes (their VMs and processes end, their directories go)."""
    from kvmvm.sandbox.server import reclaim, state_root

    if all_:
        root = state_root()
        sids = tuple(d.name for d in root.iterdir()) if root.is_dir() else ()
    elif not sids:
        raise ConfigError("rm: name sandboxes, or --all")
    missing = []
    for sid in sids:
        try:
            d = _dir(sid)
        except SandboxNotFound:
            missing.append(sid)
            continue
        try:
            pid = json.loads((d / "info.json").read_text())["pid"]
        except (OSError, ValueError, KeyError):
            pid = None
        try:
            _call(sid, {"op": "kill"}, timeout=30)
        except KvmvmError:
            pass
        # done when its directory is gone and its process has ended (it removes the directory
        # just before it exits); past the deadline it is killed
        deadline = time.monotonic() + 10
        while (d.exists() or not _ended(pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _ended(pid):
            import signal

            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
            deadline = time.monotonic() + 5
            while not _ended(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
    reclaim()
    if missing:
        raise SandboxNotFound(f"no sandbox {', '.join(missing)}")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def prune(as_json):
    """Remove the warm snapshots (the next create of each image boots cold again)."""
    from kvmvm.sandbox import vm as svm
    from kvmvm.sandbox.server import reclaim

    gone = svm.prune()
    dead = reclaim()
    if as_json:
        click.echo(json.dumps({"snapshots": gone, "reclaimed": dead}))
    else:
        click.echo(f"removed {len(gone)} warm snapshot(s), reclaimed {len(dead)} dead sandbox(es)")
