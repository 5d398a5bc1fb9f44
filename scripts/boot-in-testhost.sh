#!/usr/bin/env bash
# `./dev boot` on a host whose /dev/kvm cannot run a stock Linux guest (PVM): the same
# `kvmvm boot` runs inside the standard-KVM test host (an L1 Linux under QEMU's software
# emulation of AMD SVM). Slow, and labelled so. Input: piped stdin is forwarded; on a
# terminal a short demo session runs (the test host has no interactive console).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
say() { printf '%s\n' "kvmvm: $*" >&2; }

say "this host's /dev/kvm is the PVM hypervisor, which cannot run a stock Linux guest."
say "booting inside the standard-KVM test host instead (QEMU-emulated SVM: software, slow; not a speed figure)."
.venv/bin/kvmvm kernel build --plain >&2
mkdir -p build
input=build/boot-input.txt
if [ -t 0 ]; then
  say "no interactive console through the test host: running a demo session (pipe commands to ./dev boot to choose them)"
  printf '%s\n' 'uname -a' 'cat /proc/cpuinfo | grep -c ^processor' 'grep MemTotal /proc/meminfo' \
    'ls /sys/firmware/acpi/tables' 'echo hello from the kvmvm microVM' > "$input"
else
  cat > "$input"
fi
exec "$PY" -m tests.kvmhost run --timeout "${KVMVM_TESTHOST_TIMEOUT:-900}" -- \
  sh -c '.venv/bin/kvmvm boot "$@" < build/boot-input.txt' kvmvm-boot "$@"
