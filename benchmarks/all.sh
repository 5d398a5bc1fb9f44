#!/usr/bin/env bash
# Every benchmark behind benchmarks/README.md's Results, one after another, in the order and
# with the options the README names: each script's output (and --json where it has one) in
# OUT/NAME.txt, the commit, host, start time and load of each part in OUT/run.log.
#
#   benchmarks/all.sh [OUT]          default OUT: build/bench-all/<UTC date-time>
#   KVMVM_BENCH_PARTS="tiny_boot snapshot" benchmarks/all.sh   a subset, by part name
#
# Run it from the checkout after ./dev setup, on a machine doing nothing else (the figures are
# ratios against peers measured in the same run, but two cores shared with a build are not a
# fair field for either side). On a PVM /dev/kvm the Linux-guest parts (linux_boot, run,
# sandbox) run inside the test host (tests/kvmhost): nested, software-emulated SVM, so those
# figures are correctness-grade; on hardware KVM they run here and are the real ones.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-build/bench-all/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
PY=.venv/bin/python
LOG="$OUT/run.log"
PARTS=${KVMVM_BENCH_PARTS:-"bench tiny_boot start api_rate snapshot api virtio_net virtio_blk image_import stop_latency linux_boot run sandbox"}
pvm=0; [ -e /sys/module/kvm_pvm ] && pvm=1

{
  echo "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- kvmvm benchmarks guest-images || echo ' (with uncommitted changes)')"
  echo "host $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ {print int($2/1024) " MiB"}' /proc/meminfo), /dev/kvm: $([ $pvm = 1 ] && echo pvm || echo kvm)"
  echo "qemu $(qemu-system-x86_64 --version 2>/dev/null | head -1)"
} | tee "$LOG"

part() {    # part NAME CMD...: run CMD, its output to OUT/NAME.txt, a line in run.log
  local name=$1; shift
  [[ " $PARTS " == *" ${name%%.*} "* ]] || return 0
  local t0; t0=$(date +%s)
  echo "$(date -u +%H:%M:%S) start $name load $(cut -d' ' -f1-3 /proc/loadavg): $*" | tee -a "$LOG"
  "$@" > "$OUT/$name.txt" 2> "$OUT/$name.err"
  local rc=$?
  echo "$(date -u +%H:%M:%S) end   $name rc=$rc after $(( $(date +%s) - t0 )) s, load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$LOG"
}

part bench          .venv/bin/kvmvm bench --out "$OUT/bench" --html
part tiny_boot      $PY benchmarks/tiny_boot.py --runs 20 --qemu-variants
# `kvmvm --help` and the default kernel from main to its first KVM_RUN (--json timings; on PVM
# the guest is refused right after, which is what --timeout 0.05 leaves time for)
part start          env KVMVM_ALLOW_PVM=1 $PY benchmarks/startup_pairs.py --runs 20 \
                      'python=.venv/bin/python -c pass' 'help=.venv/bin/kvmvm --help' \
                      'kernel=.venv/bin/kvmvm boot --json --timeout 0.05'
part api_rate       $PY benchmarks/api_rate.py --seconds 4 --threads 1,4,16
part snapshot       $PY benchmarks/snapshot.py --runs 10 --vms 100 --processes 10
part api            $PY benchmarks/api.py --runs 15 --requests 500
part virtio_net     $PY benchmarks/virtio_net.py --runs 5 --count 2000
part virtio_net.60  $PY benchmarks/virtio_net.py --runs 5 --count 2000 --size 60
part virtio_blk     $PY benchmarks/virtio_blk.py --runs 10
part virtio_blk.w   $PY benchmarks/virtio_blk.py --runs 10 --write
part virtio_blk.d   $PY benchmarks/virtio_blk.py --runs 10 --direct
part virtio_blk.dw  $PY benchmarks/virtio_blk.py --runs 10 --direct --write
part image_import   $PY benchmarks/image_import.py --runs 5
part stop_latency   $PY benchmarks/stop_latency.py --runs 5
# the Linux-guest parts: on PVM, linux_boot.py and run.py re-run themselves in the test host
part linux_boot     $PY benchmarks/linux_boot.py --runs 10 --timeout 90
part run            $PY benchmarks/run.py --runs 10
if [ $pvm = 1 ]; then
  part sandbox      $PY -m tests.kvmhost run --timeout 2400 -- .venv/bin/python benchmarks/sandbox.py --runs 10 --idle 2 --commands 50
else
  part sandbox      $PY benchmarks/sandbox.py --runs 10 --idle 2 --commands 50
fi
echo "$(date -u +%H:%M:%S) done: $OUT" | tee -a "$LOG"
