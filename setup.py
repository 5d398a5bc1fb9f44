# setuptools hooks (the rest of the metadata is in pyproject.toml): the cffi extension, and
# the tiny test guests, built from guest-images/tiny into the wheel's kvmvm/tiny/elf/.
import glob
import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.path.join(HERE, "guest-images", "tiny")


class build_py_with_guests(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # a checkout uses guest-images/tiny/out (kvmvm.tiny)
        if not os.path.isfile(os.path.join(TINY, "Makefile")):
            raise SystemExit(f"kvmvm build: {TINY}/Makefile is missing: the tiny guests cannot be built")
        r = subprocess.run(["make", "-s", "-C", TINY], capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"kvmvm build: `make -C guest-images/tiny` failed (needs gcc, make, "
                             f"binutils):\n{r.stdout}{r.stderr}")
        dest = os.path.join(self.build_lib, "kvmvm", "tiny", "elf")
        os.makedirs(dest, exist_ok=True)
        for elf in glob.glob(os.path.join(TINY, "out", "*.elf")):
            shutil.copy2(elf, dest)


setup(cffi_modules=["kvmvm/native/build.py:ffibuilder"], cmdclass={"build_py": build_py_with_guests})
