#!/usr/bin/env bash
# Idempotent set-up on a Debian 12 machine: Debian packages, the project venv (.venv) with
# kvmvm installed editable (compiles the C core), and the tiny guests. Quiet when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

need=()
while read -r p; do
  p=${p%%#*}; p=${p//[[:space:]]/}
  [ -n "$p" ] || continue
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need+=("$p")
done < scripts/apt-packages.txt
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "setup: installing Debian packages: ${need[*]}" >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# QEMU (cross-checks and benchmarks against its microvm machine; the standard-KVM test host,
# tests/kvmhost): version 10 or later. Debian 12's QEMU 7.2 froze the test host's emulated
# L1 about once per linux tier (multi-threaded TCG), so on bookworm it comes from
# bookworm-backports, which setup enables (only that suite; nothing else is taken from it).
qemu_version() { dpkg-query -W -f='${Status} ${Version}' qemu-system-x86 2>/dev/null | sed -n 's/^install ok installed //p'; }
v=$(qemu_version)
if [ -z "$v" ] || ! dpkg --compare-versions "$v" ge 1:10; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  suite=()
  if grep -q '^VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null; then
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
      echo "setup: enabling bookworm-backports (QEMU 10 for the test host)" >&2
      printf '%s\n' "Types: deb" "URIs: http://deb.debian.org/debian" "Suites: bookworm-backports" \
        "Components: main" "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" |
        $SUDO tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
    fi
    suite=(-t bookworm-backports)
  fi
  echo "setup: installing QEMU ${suite[*]:+from bookworm-backports}" >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${suite[@]}" qemu-system-x86 >/dev/null
  v=$(qemu_version)
  dpkg --compare-versions "${v:-0}" ge 1:10 || { echo "setup: QEMU 10 or later is needed (found ${v:-none}); the test host freezes under older QEMU" >&2; exit 1; }
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.kvmvm-installed
src_hash=$(cat pyproject.toml setup.py MANIFEST.in bin/* kvmvm/native/*.c kvmvm/native/*.h kvmvm/native/*.py 2>/dev/null | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$src_hash" ]; then
  echo "setup: installing kvmvm into .venv (compiles the C core)" >&2
  # compat mode: a plain path entry, not an import hook that slows every start
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test,bench]" --config-settings editable_mode=compat >&2
  echo "$src_hash" > "$stamp"
fi
# bytecode up front (quick when current): start-up time matters, and PYTHONDONTWRITEBYTECODE
# may be set in the caller's environment
.venv/bin/python -m compileall -q kvmvm .venv/lib/python3*/site-packages >/dev/null 2>&1 || true
make -s -C guest-images/tiny >&2
make -s -C guest-images/tools >&2
make -s -C guest-images/agent >&2
