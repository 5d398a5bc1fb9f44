# setuptools hook for the cffi extension (the rest of the metadata is in pyproject.toml)
from setuptools import setup

setup(cffi_modules=["kvmvm/native/build.py:ffibuilder"])
