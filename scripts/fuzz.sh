#!/usr/bin/env bash
# libFuzzer harnesses (tests/fuzz/fuzz_*.c) over kvmvm's C device code, built with clang-14,
# AddressSanitizer and UBSan (any UB aborts). Each harness drives the real kvmvm/native/
# code against a fake guest memory (tests/fuzz/env.c). atheris harnesses (tests/fuzz/fuzz_*.py,
# pip atheris, a test dependency) do the same for the Python parsers of untrusted input: the
# agent protocol (agent) and the snapshot loader (snapshot). Both kinds take libFuzzer's flags.
#
#   scripts/fuzz.sh build                      build every harness into build/fuzz/
#   scripts/fuzz.sh run [-t SECONDS] [-r RUNS | --execs N] [-j | -P JOBS] [NAME...]
#                                              fuzz each harness (default 30 s), one at a time
#                                              (-j: all at once; -P: JOBS at a time);
#                                              -t and --execs together: whichever comes first
#   scripts/fuzz.sh long [--execs N] [-t SECONDS] [-P JOBS] [NAME...]
#                                              the long run: every harness at once (or JOBS at
#                                              a time) toward N executions (default 10,000,000)
#                                              or SECONDS each (default 6 h), under `nice -n 15`
#   scripts/fuzz.sh regress [NAME...]          run every saved input once (tests/fuzz/corpus/)
#
# NAME is a harness without the fuzz_ prefix (C: virtq, blk, net, handshake, vsock, mmio, uart, state; Python:
# agent, snapshot). tests/fuzz/NAME.dict, when there is one, is passed as -dict.
# The working corpus is build/fuzz/corpus/NAME, seeded from tests/fuzz/corpus/NAME (which
# holds the regression inputs: every crash ever found). A crash leaves its input in
# build/fuzz/crashes/ and fails the run. One summary line per harness:
#   fuzz NAME: RUNS runs in S s (R/s), cov C, ft F, corpus K
set -uo pipefail
cd "$(dirname "$0")/.."
CC=${FUZZ_CC:-clang-14}
OUT=build/fuzz
SRC=tests/fuzz
NATIVE=kvmvm/native
CFLAGS=(-g -O1 -std=gnu11 -pthread -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
        -fno-sanitize-recover=all -I"$NATIVE" -I"$SRC" -Wall -Wno-unused-parameter)
PY=.venv/bin/python
C_ALL=$(ls $SRC/fuzz_*.c | sed 's|.*/fuzz_||; s|\.c$||')
PY_ALL=$(ls $SRC/fuzz_*.py | sed 's|.*/fuzz_||; s|\.py$||')
ALL="$C_ALL $PY_ALL"

die() { echo "fuzz.sh: $*" >&2; exit 2; }

build() {
  command -v "$CC" >/dev/null || die "$CC not found (Debian: clang-14 libclang-rt-14-dev)"
  mkdir -p "$OUT/obj"
  local objs=() s o
  # the production sources, less the epoll worker thread (env.c is its synchronous stand-in)
  for s in $NATIVE/*.c $SRC/env.c; do
    [ "$(basename "$s")" = virtio_worker.c ] && continue
    o=$OUT/obj/$(basename "${s%.c}").o
    if [ ! -e "$o" ] || [ "$s" -nt "$o" ] || [ -n "$(find $NATIVE $SRC -name '*.h' -newer "$o")" ]; then
      "$CC" "${CFLAGS[@]}" -fsanitize=fuzzer-no-link -c "$s" -o "$o" || die "compile $s failed"
    fi
    objs+=("$o")
  done
  if [ -n "$PY_ALL" ]; then
    "$PY" -c "import atheris" 2>/dev/null || die "atheris is not installed in .venv (scripts/setup.sh installs the test extras)"
  fi
  local h x
  for h in $C_ALL; do
    o=$OUT/fuzz_$h
    if [ -e "$o" ] && [ ! "$SRC/fuzz_$h.c" -nt "$o" ]; then
      for x in "${objs[@]}"; do [ "$x" -nt "$o" ] && break; done
      [ "$x" -nt "$o" ] || continue      # up to date
    fi
    "$CC" "${CFLAGS[@]}" "$SRC/fuzz_$h.c" "${objs[@]}" -lseccomp -o "$o" || die "link fuzz_$h failed"
  done
}

names() { if [ $# -gt 0 ]; then echo "$@"; else echo $ALL; fi; }

summary() {  # name log seconds
  awk -v name="$1" -v secs="$3" '
    /^#[0-9]+/ { for (i = 1; i <= NF; i++) { if ($i == "cov:") cov = $(i+1); if ($i == "ft:") ft = $(i+1); if ($i == "corp:") corp = $(i+1) } }
    /^#[0-9]+/ { last = substr($1, 2) }
    /^Done [0-9]+ runs/ { runs = $2 }
    END { if (runs == "") runs = last;  # stopped before its end (a signal): the last status line
 split(corp, c, "/"); rate = secs > 0 ? int(runs / secs) : 0;
          printf "fuzz %s: %d runs in %d s (%d/s), cov %s, ft %s, corpus %s\n", name, runs, secs, rate, cov, ft, c[1] }' "$2"
}

harness() {  # name: the command that runs it
  if [ -e "$SRC/fuzz_$1.py" ]; then
    echo "env KVMVM_FUZZ_WORKDIR=$OUT/work/$1 $PY $SRC/fuzz_$1.py"
  elif [ -x "$OUT/fuzz_$1" ]; then
    echo "$OUT/fuzz_$1"
  else
    die "no harness fuzz_$1"
  fi
}

one() {  # name limit...: fuzz one harness, print its summary line
  local h=$1 t0 r secs cmd dict=(); shift
  cmd=$(harness "$h") || exit 2
  [ -e "$SRC/$h.dict" ] && dict=(-dict="$SRC/$h.dict")
  mkdir -p "$OUT/corpus/$h" "$SRC/corpus/$h"
  t0=$(date +%s)
  # -rss_limit_mb: the harnesses map guest RAM with guard pages; ASan counts the mappings
  $cmd "$@" "${dict[@]}" -rss_limit_mb=4096 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$OUT/crashes/$h-" "$OUT/corpus/$h" "$SRC/corpus/$h" \
    > "$OUT/logs/${LOGPFX:-}$h.log" 2>&1
  r=$?
  secs=$(( $(date +%s) - t0 ))
  summary "$h" "$OUT/logs/${LOGPFX:-}$h.log" "$secs"
  if [ $r -ne 0 ]; then
    echo "fuzz.sh: fuzz_$h failed (exit $r); input: $(ls -t $OUT/crashes/$h-* 2>/dev/null | head -1)" >&2
    grep -m5 -E "ERROR|runtime error|SUMMARY|Uncaught Python exception|^[A-Za-z]+Error:" "$OUT/logs/${LOGPFX:-}$h.log" >&2
    return 1
  fi
}

run() {
  local time=(-max_total_time=30) runs=() parallel=0
  while [ $# -gt 0 ]; do
    case $1 in
      -t) time=(-max_total_time="$2"); shift 2 ;;
      -r|--execs)
        [[ $2 =~ ^[0-9]+$ ]] || die "$1 takes a number of executions"
        runs=(-runs="$2"); [ "${time[0]}" = -max_total_time=30 ] && time=(); shift 2 ;;
      -j) parallel=1000; shift ;;
      -P) [[ $2 =~ ^[1-9][0-9]*$ ]] || die "-P takes a number of jobs"; parallel=$2; shift 2 ;;
      -*) die "unknown option $1" ;;
      *) break ;;
    esac
  done
  build
  mkdir -p "$OUT/crashes" "$OUT/logs"
  local h rc=0 pids=() failed
  failed=$(mktemp) || die "mktemp failed"
  for h in $(names "$@"); do
    if [ "$parallel" -gt 0 ]; then
      while [ "$(jobs -rp | wc -l)" -ge "$parallel" ]; do wait -n; done
      { one "$h" "${time[@]}" "${runs[@]}" || echo "$h" >> "$failed"; } & pids+=($!)
    else
      one "$h" "${time[@]}" "${runs[@]}" || rc=1
    fi
  done
  for h in "${pids[@]}"; do wait "$h"; done
  [ -s "$failed" ] && rc=1
  rm -f "$failed"
  return $rc
}

long() {
  local execs=10000000 secs=21600 jobs=(-j)
  while [ $# -gt 0 ]; do
    case $1 in
      --execs) execs=$2; shift 2 ;;
      -P) jobs=(-P "$2"); shift 2 ;;
      -t) secs=$2; shift 2 ;;
      -*) die "unknown option $1" ;;
      *) break ;;
    esac
  done
  build   # at normal priority, once, before the harnesses start together
  echo "fuzz.sh long: nice -n 15 scripts/fuzz.sh run ${jobs[*]} --execs $execs -t $secs $(names "$@")"
  LOGPFX=long- nice -n 15 "$0" run "${jobs[@]}" --execs "$execs" -t "$secs" "$@"
}

regress() {
  build
  local h rc=0 n cmd
  for h in $(names "$@"); do
    n=$(ls "$SRC/corpus/$h" 2>/dev/null | wc -l)
    [ "$n" -gt 0 ] || continue
    cmd=$(harness "$h") || exit 2
    if ! $cmd -runs=0 -rss_limit_mb=4096 "$SRC/corpus/$h"/* > "$OUT/regress-$h.log" 2>&1; then
      echo "fuzz.sh: a saved input crashes fuzz_$h again:" >&2
      grep -m5 -E "ERROR|runtime error|Running:|Uncaught Python exception|^[A-Za-z]+Error:" "$OUT/regress-$h.log" >&2
      rc=1
    else
      echo "fuzz $h: $n saved inputs pass"
    fi
  done
  return $rc
}

case ${1:-} in
  build) build ;;
  run) shift; run "$@" ;;
  long) shift; long "$@" ;;
  regress) shift; regress "$@" ;;
  *) sed -n '2,25p' "$0"; exit 2 ;;
esac
