"""The one error shape of the API: a status (400 unless said) and Firecracker's fault message."""

from __future__ import annotations

# Firecracker's wording for an operation in the wrong half of the VM's life
NOT_AFTER_BOOT = "The requested operation is not supported after starting the microVM."
NOT_BEFORE_BOOT = "The requested operation is not supported before starting the microVM."


class ApiError(Exception):
    """Answered as {"fault_message": message} with `status`."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


def unsupported(what: str) -> ApiError:
    """What kvmvm does not do (yet): refused, named, never silently accepted."""
    return ApiError(f"kvmvm does not support {what}.")
