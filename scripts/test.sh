#!/usr/bin/env bash
# kvmvm's test tiers, after scripts/setup.sh made .venv:
#   host   tiny guests, on the local /dev/kvm whatever it is (PVM included)
#   asan   the adversarial tiny guests again, against an AddressSanitizer build of the C core
#          (scripts/asan.sh; only when no test paths are given)
#   linux  Linux guests, on a standard KVM: the local /dev/kvm when it can run Linux guests,
#          else inside the kvmhost L1 (QEMU TCG emulating AMD SVM; see tests/kvmhost/)
# Usage: scripts/test.sh [pytest args]   (given paths replace the default ones; both tiers get the args)
# Environment: KVMVM_TIERS=host,asan,linux (which tiers), KVMVM_LINUX_TIER_TIMEOUT=seconds (the linux tier
#              in the L1, its retries included; default 3300),
#              CI=true: nothing is skipped for lack of KVM.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
REPORTS=build/test-reports
TIERS=${KVMVM_TIERS:-host,asan,linux}
ASAN_PATHS=(tests/integration/test_hostile.py tests/integration/test_virtio.py tests/integration/test_snapshot.py
            tests/integration/test_blk_direct.py)
LINUX_TIMEOUT=${KVMVM_LINUX_TIER_TIMEOUT:-3300}
# one linux-tier test may not take longer than this (a hung nested guest fails, not stalls)
LINUX_TEST_TIMEOUT=${KVMVM_LINUX_TEST_TIMEOUT:-420}

[ -x "$PY" ] || { echo "test.sh: $PY missing: run scripts/setup.sh first" >&2; exit 2; }
if [ "${CI:-}" = true ] && [ ! -e /dev/kvm ]; then
  echo "test.sh: CI=true and there is no /dev/kvm: refusing to skip the KVM tests" >&2
  exit 1
fi
# A linux-tier test that cannot run errors rather than skips (tests/conftest.py).
export KVMVM_REQUIRE_LINUX_KVM=1

mkdir -p "$REPORTS"
rm -f "$REPORTS"/host.xml "$REPORTS"/asan.xml "$REPORTS"/linux.xml "$REPORTS"/kvmhost.json "$REPORTS"/*-attempt[0-9].* "$REPORTS"/linux-progress-attempt*
linux_retried=0

# Paths among the arguments replace the default test paths; they also decide which tiers apply.
paths=() ; opts=()
for a in "$@"; do
  if [[ $a != -* ]] && [ -e "${a%%::*}" ]; then paths+=("$a"); else opts+=("$a"); fi
done
host_paths=(tests) ; linux_paths=(tests/linux)
if [ ${#paths[@]} -gt 0 ]; then
  host_paths=() ; linux_paths=()
  for p in "${paths[@]}"; do
    r=$(realpath -m "${p%%::*}") ; l=$(realpath -m tests/linux)
    case "$r/" in "$l"/*) linux_paths+=("$p") ;; *) host_paths+=("$p") ;; esac
    case "$l/" in "$r"/*) linux_paths+=("$p") ;; esac   # a parent of tests/linux: both tiers
  done
fi

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" "BEGIN { print b - a }"; }
t_start=$(now)
failed=()

# pytest exit 5 (nothing collected) fails a tier unless the caller's arguments narrowed it.
check() {  # tier rc
  local tier=$1 rc=$2
  if [ "$rc" = 5 ]; then
    if [ $# -gt 2 ] && [ "$3" = narrowed ]; then echo "test.sh: $tier tier: no test selected by the given arguments" >&2; return; fi
    echo "test.sh: $tier tier collected no tests" >&2
  fi
  [ "$rc" = 0 ] || failed+=("$tier (exit $rc)")
}
narrowed=full; [ $# -gt 0 ] && narrowed=narrowed

host_s=- ; asan_s=- ; linux_s=- ; linux_where=- ; image_s=-
if [[ ,$TIERS, == *,host,* ]] && [ ${#host_paths[@]} -gt 0 ]; then
  echo "== test.sh: host tier" >&2
  t=$(now)
  "$PY" -m pytest -m host --junitxml="$REPORTS/host.xml" "${opts[@]}" "${host_paths[@]}"
  check host $? $narrowed
  host_s=$(since $t)
fi

if [[ ,$TIERS, == *,asan,* ]] && [ ${#paths[@]} -eq 0 ]; then
  echo "== test.sh: asan tier (adversarial guests, C core built with AddressSanitizer)" >&2
  t=$(now)
  scripts/asan.sh run "$PY" -m pytest -m host --junitxml="$REPORTS/asan.xml" "${opts[@]}" "${ASAN_PATHS[@]}"
  check asan $?
  asan_s=$(since $t)
fi

if [[ ,$TIERS, == *,linux,* ]] && [ ${#linux_paths[@]} -gt 0 ]; then
  # kvmvm's guest kernel + initramfs: built (or found in the cache) here on the host, where
  # compiling is fast; the linux tier reads them from the KVMVM_HOME it shares
  echo "== test.sh: kvmvm kernel build (cached after the first time)" >&2
  t=$(now)
  .venv/bin/kvmvm kernel build --plain >&2 || failed+=("kvmvm kernel build (exit $?)")
  # test images that need the network (mmdebstrap's Debian rootfs): built or found in the
  # cache here, since the L1 has no network; only when a selected test file names them
  "$PY" -m tests.debianimage --for "${linux_paths[@]}" >/dev/null || failed+=("Debian test image (exit $?)")
  image_s=$(since $t)
  t=$(now)
  if [ -e /dev/kvm ] && [ ! -e /sys/module/kvm_pvm ]; then
    linux_where="local /dev/kvm"
    echo "== test.sh: linux tier on the local /dev/kvm" >&2
    "$PY" -m pytest -m linux --junitxml="$REPORTS/linux.xml" "${opts[@]}" "${linux_paths[@]}"
    check linux $? $narrowed
  else
    linux_where="kvmhost L1"
    echo "== test.sh: linux tier inside the kvmhost L1 (local /dev/kvm cannot run Linux guests)" >&2
    # One budget for the whole tier, retries included (CI's limit is 90 minutes in all).
    deadline=$(( $(date +%s) + LINUX_TIMEOUT ))
    run_l1() {   # $1: attempt number; more args: extra pytest args
      local n=$1; shift
      local left=$(( deadline - $(date +%s) ))
      "$PY" -m tests.kvmhost run --cpus 2 --timeout "$left" --report "$REPORTS/kvmhost.json" \
        --env KVMVM_TEST_PROGRESS="$PWD/$REPORTS/linux-progress-attempt$n.txt" -- \
        "$PY" -m pytest -m linux -o timeout="$LINUX_TEST_TIMEOUT" --junitxml="$REPORTS/linux.xml" \
        "${opts[@]}" "$@" "${linux_paths[@]}"
    }
    froze_mark() {   # the attempt ended with the L1 frozen: its failures run once more
      [ "$rc" = 124 ] && touch "$REPORTS/linux-progress-attempt$attempt.txt.froze"; return 0
    }
    attempt=1
    run_l1 $attempt; rc=$?; froze_mark
    # A fresh L1 runs what is left when the test host failed, not kvmvm: rc 124, the L1 froze
    # (its heartbeat stopped: QEMU's multi-threaded TCG hangs now and then, a vCPU re-taking an
    # exception of the kernel forever), its kernel died, or the budget ran out: the tests that
    # had not finished; and, once, a test whose guest crashed (a triple fault, KVM_EXIT_SHUTDOWN,
    # or a kernel panic, which the emulated SVM causes now and then) or that failed in an attempt that then froze (an
    # L1 on its way to a freeze runs guests ever slower). A test that finished otherwise,
    # passed or failed, is never run again. Loudly: each attempt's reports are kept and every rerun is
    # named in the summary (tests/kvmhost/progress.py; README.md, Tests).
    while [ $attempt -lt 6 ] && [ $(( deadline - $(date +%s) )) -gt 300 ]; do
      mapfile -t again < <("$PY" -m tests.kvmhost.progress rerun "$REPORTS" | sed "/^$/d")
      [ "$rc" = 124 ] || [ ${#again[@]} -gt 0 ] || break
      for f in linux.xml kvmhost.json; do
        [ -e "$REPORTS/$f" ] && mv "$REPORTS/$f" "$REPORTS/${f%.*}-attempt$attempt.${f##*.}"
      done
      done_args=()
      while read -r nodeid; do
        [ -n "$nodeid" ] && done_args+=(--deselect "$nodeid")
      done < <("$PY" -m tests.kvmhost.progress deselect "$REPORTS")
      attempt=$((attempt + 1))
      why="the kvmhost L1 froze, crashed or timed out"; [ "$rc" = 124 ] || why="a guest crashed in ${#again[@]} test(s)"
      echo "test.sh: $why; linux tier attempt $attempt of at most 6, for the tests not finished yet or to run again ($(( ${#done_args[@]} / 2 )) finished; reports: $REPORTS/*-attempt*.*)" >&2
      linux_retried=1
      run_l1 $attempt "${done_args[@]}"; rc=$?; froze_mark
      [ "$rc" = 5 ] && rc=0   # every test had finished in earlier attempts
    done
    if [ "$linux_retried" = 1 ] && { [ "$rc" = 0 ] || [ "$rc" = 1 ]; }; then
      # the last attempt ran to its end: the tier's result is every test's last outcome
      read -r _p nfailed _s < <("$PY" -m tests.kvmhost.progress count "$REPORTS" 2>/dev/null)
      if [ "${nfailed:-1}" = 0 ]; then rc=0; elif [ "$rc" = 0 ]; then rc=1; fi
    fi
    check linux $rc $narrowed
  fi
  linux_s=$(since $t)
fi

# Per-tier times, then one closing line of counts over both tiers (from the JUnit reports).
"$PY" - "$REPORTS" "$host_s" "$linux_s" "$linux_where" "$(since $t_start)" "${#failed[@]}" "$image_s" "$asan_s" "$linux_retried" <<'EOF'
import json, subprocess, sys, xml.etree.ElementTree as ET
from pathlib import Path
reports, host_s, linux_s, where, total_s, tier_failures, image_s, asan_s, retried = sys.argv[1:]
fmt = lambda s: "-" if s == "-" else f"{float(s):.1f} s"
l1 = "-"
kj = Path(reports, "kvmhost.json")
if kj.is_file():
    r = json.loads(kj.read_text())
    l1 = f"{r['ready_s']:.1f} s" if r.get("ready_s") else "-"
print(f"test.sh: times: host tier {fmt(host_s)} | asan tier {fmt(asan_s)} | guest kernel build {fmt(image_s)} | L1 start {l1} | linux tier {fmt(linux_s)} ({where}) | total {fmt(total_s)}")
passed = failed = skipped = 0
for tier, ran in (("host", host_s), ("asan", asan_s), ("linux", linux_s)):
    x = Path(reports, f"{tier}.xml")
    if ran == "-":
        continue
    if tier == "linux" and retried == "1":  # every test's last outcome over the attempts
        r = subprocess.run([sys.executable, "-m", "tests.kvmhost.progress", "count", reports],
                           capture_output=True, text=True)
        sys.stderr.write(r.stderr)
        p, f, k = map(int, r.stdout.split())
        passed, failed, skipped = passed + p, failed + f, skipped + k
        if not x.is_file():
            print(f"test.sh: {tier} tier's last attempt left no report (it did not run to the end)")
            failed += 1
        continue
    if not x.is_file():
        print(f"test.sh: {tier} tier left no report (it did not run to the end)")
        failed += 1
        continue
    for s in ET.parse(x).getroot().iter("testsuite"):
        n, f, e, k = (int(s.get(a, 0)) for a in ("tests", "failures", "errors", "skipped"))
        passed += n - f - e - k
        failed += f + e
        skipped += k
if int(tier_failures) and not failed:
    failed = int(tier_failures)
retry = " (the linux tier took more than one test-host attempt: see the *-attempt*.* reports)" if retried == "1" else ""
print(f"summary: {passed} passed, {failed} failed, {skipped} skipped{retry}")
EOF

if [ ${#failed[@]} -gt 0 ]; then
  echo "test.sh: FAILED: ${failed[*]}" >&2
  exit 1
fi
