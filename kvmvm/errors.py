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


class SandboxError(KvmvmError):
    """A sandbox (kvmvm.Sandbox) could not do what was asked."""


class SandboxNotFound(SandboxError, builtins.LookupError):
    """No live sandbox by that id (never created, killed, or its process died)."""


class SandboxTimeout(SandboxError, builtins.TimeoutError):
    """The sandbox reached its wall-clock lifetime (`timeout`) and was killed."""


class SandboxClosed(SandboxError):
    """The sandbox was killed (or its VM ended); it can do nothing more."""


class CommandTimeout(SandboxError, builtins.TimeoutError):
    """A command ran past its timeout and was killed; the sandbox lives on. `result` holds
    what it printed until then."""

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result


class CommandExitError(SandboxError):
    """A command ended with a non-zero status (run with check=False to get the result
    instead). `result` is the CommandResult: stdout, stderr, exit_code."""

    def __init__(self, result):
        what = result.error or f"exit status {result.exit_code}"
        tail = (result.stderr or "").strip().splitlines()
        super().__init__(f"command failed ({what})" + (f": {tail[-1][:200]}" if tail else ""))
        self.result = result

    @property
    def exit_code(self) -> int:
        return self.result.exit_code

    @property
    def stdout(self) -> str:
        return self.result.stdout

    @property
    def stderr(self) -> str:
        return self.result.stderr


class SandboxFileError(SandboxError, builtins.OSError):
    """A file request failed inside the sandbox; errno is the guest's."""

    def __init__(self, err: int, message: str):
        builtins.OSError.__init__(self, err, message)

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class SandboxFileNotFound(SandboxFileError, builtins.FileNotFoundError):
    """The path does not exist inside the sandbox."""
