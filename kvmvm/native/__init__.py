"""kvmvm's C core: sources and the cffi build script (the compiled module is kvmvm._native)."""
