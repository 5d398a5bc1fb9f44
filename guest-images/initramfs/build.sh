#!/bin/sh
# Write kvmvm's default initramfs (busybox-static + ./init, a gzip'd newc cpio) to $1,
# or print the path of the cached copy under $KVMVM_HOME. `kvmvm kernel build` does the
# same as part of building the default guest. ./init links to kvmvm/image/init.sh, the
# copy the installed package ships.
set -eu
cd "$(dirname "$0")/../.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$PY" -c 'import sys; from kvmvm.image.initramfs import main; sys.exit(main(sys.argv[1:]))' "$@"
