#!/usr/bin/env bash
# kvmvm's C core built with AddressSanitizer, and commands run against that build:
#   scripts/asan.sh build            -> build/asan/_native.abi3.so
#   scripts/asan.sh run CMD [ARG...]  runs CMD with KVMVM_NATIVE pointing at it and the ASan
#                                     runtime preloaded (child kvmvm processes inherit both);
#                                     an ASan report kills the process (SIGABRT)
# e.g. scripts/asan.sh run .venv/bin/python -m pytest -m host tests/integration/test_hostile.py
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=build/asan/_native.abi3.so

build() {
  mkdir -p build/asan
  if [ ! -e "$OUT" ] || [ -n "$(find kvmvm/native -newer "$OUT" -name '*.[ch]')" ]; then
    KVMVM_SANITIZE=address KVMVM_NATIVE_OUT="$OUT" .venv/bin/python kvmvm/native/build.py
  fi
}

case ${1:-} in
  build) build ;;
  run)
    shift
    build
    export KVMVM_NATIVE=$PWD/$OUT
    export LD_PRELOAD=$(gcc -print-file-name=libasan.so)
    # Python itself leaks by design: no leak report; any memory error aborts
    export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1
    exec "$@" ;;
  *) sed -n '2,8p' "$0"; exit 2 ;;
esac
