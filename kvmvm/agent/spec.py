"""What a container runs: the image's config merged with podman-style flags.

podman's rules: the entrypoint is --entrypoint or the image's Entrypoint; the command is the
one given on the command line, else the image's Cmd (dropped when --entrypoint is given);
the environment is the image's Env, then --env-file files, then -e (later wins); the working
directory is -w or WorkingDir or /; the user is -u or User or root. Sizes and counts parse
as podman does (`512m`, `2g`; bare numbers are bytes).
"""

from __future__ import annotations

import json
import math
import os
import re

from kvmvm.errors import ConfigError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MIN_MEMORY_MIB = 64
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_ENV_KEY = re.compile(r"^[^=\s]+$")


def parse_memory(text: str) -> int:
    """`--memory` -> MiB (rounded up); ConfigError for bad or too small values."""
    m = _SIZE.match(text or "")
    if not m:
        raise ConfigError(f"--memory {text!r}: not a size (use e.g. 512m or 2g)")
    mult = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    mib = math.ceil(float(m.group(1)) * mult / (1 << 20))
    if mib < MIN_MEMORY_MIB:
        raise ConfigError(f"--memory {text}: a container VM needs at least {MIN_MEMORY_MIB}m")
    if mib > 1 << 20:
        raise ConfigError(f"--memory {text}: at most 1t")
    return mib


def parse_cpus(text: str) -> int:
    """`--cpus 1.5` -> 2 vCPUs (a VM has whole CPUs)."""
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise ConfigError(f"--cpus {text!r}: not a number") from None
    if not 0 < v <= 64 or math.isnan(v):
        raise ConfigError(f"--cpus {text}: must be more than 0 and at most 64")
    return math.ceil(v)


def parse_timeout(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        v = float(text)
    except ValueError:
        raise ConfigError(f"--timeout {text!r}: not a number of seconds") from None
    if not v > 0 or math.isinf(v):
        raise ConfigError(f"--timeout {text}: must be positive")
    return v


def read_env_file(path: str) -> list[str]:
    """podman's --env-file: KEY=VALUE lines; `#` comments and blank lines skipped; a bare
    KEY takes the host's value (skipped when the host has none)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ConfigError(f"--env-file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--env-file {path}: not UTF-8 text") from None
    out = []
    for i, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        out.extend(env_arg(s, f"--env-file {path}:{i}"))
    return out


def env_arg(s: str, what: str = "-e") -> list[str]:
    key, eq, val = s.partition("=")
    if not key or not _ENV_KEY.match(key):
        raise ConfigError(f"{what} {s!r}: expected KEY=VALUE")
    if not eq:
        host = os.environ.get(key)
        return [] if host is None else [f"{key}={host}"]
    return [f"{key}={val}"]


def merge_env(*lists) -> list[str]:
    """Later lists win, key by key; order of first appearance is kept."""
    env: dict[str, str] = {}
    for lst in lists:
        for kv in lst or []:
            k, _, v = kv.partition("=")
            env[k] = v
    return [f"{k}={v}" for k, v in env.items()]


def parse_entrypoint(text: str) -> list[str]:
    """--entrypoint: a JSON array of strings, or one program name (podman's rules)."""
    if text.lstrip().startswith("["):
        try:
            v = json.loads(text)
        except ValueError:
            raise ConfigError(f"--entrypoint {text!r}: not a JSON array of strings") from None
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ConfigError(f"--entrypoint {text!r}: not a JSON array of strings")
        return v
    return [text] if text else []


def process(config: dict, command: list[str], *, entrypoint: str | None = None,
            env: list[str] = (), env_files: list[str] = (), workdir: str | None = None,
            user: str | None = None, tty: bool = False, hostname: str = "") -> dict:
    """argv, env, cwd and user for the container's main process."""
    config = config or {}
    ep = parse_entrypoint(entrypoint) if entrypoint is not None else list(config.get("Entrypoint") or [])
    if command:
        cmd = list(command)
    else:
        cmd = [] if entrypoint is not None else list(config.get("Cmd") or [])
    argv = ep + cmd
    if not argv:
        raise ConfigError("no command given and the image has no Entrypoint or Cmd")
    cli_env = []
    for f in env_files:
        cli_env += read_env_file(f)
    for e in env:
        cli_env += env_arg(e)
    base = [f"PATH={DEFAULT_PATH}"]
    extra = [f"HOSTNAME={hostname}"] if hostname else []
    if tty:
        extra.append("TERM=xterm")
    envs = merge_env(base, extra, list(config.get("Env") or []), cli_env)
    cwd = workdir if workdir is not None else (config.get("WorkingDir") or "/")
    if not cwd.startswith("/"):
        raise ConfigError(f"-w {cwd!r}: the working directory must be an absolute path")
    return {"argv": argv, "env": envs, "cwd": cwd,
            "user": user if user is not None else (config.get("User") or "")}
