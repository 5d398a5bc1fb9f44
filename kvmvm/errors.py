"""The kvmvm error hierarchy (one base; specific errors also inherit the matching built-in)."""

import builtins


class KvmvmError(Exception):
    """Base of every error kvmvm raises on purpose. The CLI prints it as one line."""

    exit_code = 1


class ConfigError(builtins.ValueError, KvmvmError):
    """Bad user input: a flag, a path, a size. The CLI exits 2."""

    exit_code = 2


class ImageError(ConfigError):
    """A kernel or guest image that cannot be loaded (malformed, too big, wrong format)."""


class KvmError(builtins.OSError, KvmvmError):
    """/dev/kvm is missing, unusable, or an ioctl failed."""

    exit_code = 1

    def __str__(self) -> str:  # one clear line, without OSError's "[Errno N]" prefix
        return self.strerror or super().__str__()


class GuestMemoryError(builtins.ValueError, KvmvmError):
    """An access to guest memory outside its regions (addr + len checked)."""


class BusError(builtins.ValueError, KvmvmError):
    """A bus range that overlaps another, is empty or overflows."""


class HostUnsupported(KvmvmError):
    """This host's KVM cannot do what was asked (e.g. PVM cannot run a stock Linux guest)."""

    exit_code = 1


class MissingPackages(KvmvmError):
    """Host packages a build needs are not installed; `packages` names them (Debian)."""

    exit_code = 1

    def __init__(self, message: str, packages=()):
        super().__init__(message)
        self.packages = list(packages)
