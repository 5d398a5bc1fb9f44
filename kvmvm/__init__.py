"""kvmvm: hardware-isolated microVMs on Linux KVM, with a Python control plane and a C core."""

__version__ = "0.1.0"
