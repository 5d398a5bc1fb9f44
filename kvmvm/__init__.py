"""kvmvm: hardware-isolated microVMs on Linux KVM, with a Python control plane and a C core."""

__version__ = "0.1.0"


def __getattr__(name):
    # lazy: `import kvmvm` stays cheap for `kvmvm boot`
    if name == "Sandbox":
        from kvmvm.sandbox import Sandbox

        return Sandbox
    raise AttributeError(f"module 'kvmvm' has no attribute {name!r}")
