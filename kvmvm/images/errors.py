"""Errors of the container image store (each also a kvmvm error, printed as one line)."""

from __future__ import annotations

import builtins

from kvmvm.errors import ConfigError, KvmvmError


class ImageNotFound(builtins.LookupError, KvmvmError):
    """No image in the store answers to that name or digest."""

    exit_code = 1

    def __str__(self) -> str:  # LookupError would quote the message
        return str(self.args[0]) if self.args else "image not found"


class ImageImportError(KvmvmError):
    """A source that cannot be imported: corrupt, truncated, or a tool failed on it."""

    exit_code = 1


class ImageInUse(KvmvmError):
    """The image is used by a running VM, so it cannot be removed."""

    exit_code = 2


class MissingTool(KvmvmError):
    """A program the store needs is not installed; the message names the Debian package."""

    exit_code = 1


class VolumeError(ConfigError):
    """A bad -v specification or a volume that cannot be used."""
