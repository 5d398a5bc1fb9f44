"""cffi build script for kvmvm._native: reads the declarations header and the C files.

Wired into packaging through `cffi_modules` in pyproject/setup; `python kvmvm/native/build.py`
also builds in place for development.
"""

import glob
import hashlib
import json
import os
import subprocess
import sysconfig

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))

ffibuilder = FFI()
# api.h, then one api_<area>.h per further area (e.g. api_virtio.h), all cffi-parseable
_HEADERS = ["api.h"] + sorted(os.path.basename(p) for p in glob.glob(os.path.join(HERE, "api_*.h")))
for _h in _HEADERS:
    with open(os.path.join(HERE, _h)) as f:
        ffibuilder.cdef(f.read())
# the slow path: C device code calls into Python (cffi takes the GIL)
ffibuilder.cdef(
    'extern "Python+C" int kvmvm_py_io(uint64_t handle, int is_write, uint64_t offset,'
    " uint8_t *data, uint32_t len);"
)
# which build this is (kvmvm --version, kvmvm doctor)
ffibuilder.cdef("const char *kvmvm_build_id(void); const char *kvmvm_build_cc(void);")

CFLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-pthread", "-std=gnu11"]


def compiler_version() -> str:
    """The first line of `$CC --version` (the compiler setuptools will use)."""
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
        return out.splitlines()[0].strip() if out else cc
    except (OSError, subprocess.SubprocessError):
        return cc


def build_id(cc: str) -> str:
    """12 hex digits of sha256 over the C sources and headers, the compiler and the flags."""
    h = hashlib.sha256()
    for p in sorted(glob.glob(os.path.join(HERE, "*.[ch]"))):
        with open(p, "rb") as f:
            h.update(os.path.basename(p).encode() + b"\0" + f.read() + b"\0")
    h.update(cc.encode() + b"\0" + " ".join(CFLAGS).encode())
    return h.hexdigest()[:12]


# KVMVM_SANITIZE=address: an AddressSanitizer build (scripts/asan.sh; never installed)
_SANITIZE = ["-fsanitize=address", "-fno-omit-frame-pointer", "-g"] if os.environ.get(
    "KVMVM_SANITIZE") == "address" else []


def _set_source(absolute: bool) -> None:
    srcs = sorted(glob.glob(os.path.join(HERE, "*.c")))
    if not absolute:  # setuptools wants paths relative to the project root
        srcs = [os.path.relpath(s) for s in srcs]
    cc = compiler_version()
    ident = (f"static const char *kvmvm_build_id(void) {{ return {json.dumps(build_id(cc))}; }}\n"
             f"static const char *kvmvm_build_cc(void) {{ return {json.dumps(cc)}; }}\n")
    ffibuilder.set_source(
        "kvmvm._native",
        '#include "internal.h"\n' + "".join(f'#include "{h}"\n' for h in _HEADERS[1:]) + ident,
        sources=srcs,
        include_dirs=[HERE],
        extra_compile_args=CFLAGS + _SANITIZE + (["-DKVMVM_ASAN_BUILD"] if _SANITIZE else []),
        extra_link_args=["-pthread"] + _SANITIZE,
        libraries=["seccomp"],
    )


_set_source(absolute=__name__ == "__main__")

if __name__ == "__main__":
    # development rebuild in place: `python kvmvm/native/build.py` (pip install -e . does the same)
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        so = ffibuilder.compile(tmpdir=tmp, verbose=False)
        shutil.copy(so, os.environ.get("KVMVM_NATIVE_OUT") or os.path.join(HERE, "..", "_native.abi3.so"))
