"""Requests to handlers: Firecracker's routing (method + first path segment) and its
generic errors, one request at a time under the VMM's lock, counted for the metrics."""

from __future__ import annotations

from kvmvm.api.errors import ApiError

_GROUPS = ("instance", "boot_source", "machine_config", "drives", "net", "vsock", "entropy",
           "serial", "telemetry", "actions", "snapshot", "unsupported")


def route_table() -> dict:
    import importlib

    table = {}
    for g in _GROUPS:
        for method, segment, fn, metric_group, metric in importlib.import_module(f"kvmvm.api.{g}").ROUTES:
            table[(method, segment)] = (fn, metric_group, metric)
    return table


class Router:
    """`router(method, target, body)` -> (status, payload or None)."""

    def __init__(self, vmm, table: dict | None = None):
        self.vmm = vmm
        self.table = table or route_table()

    def __call__(self, method: str, target: str, body: bytes | None):
        path = target.split("?", 1)[0]
        tokens = [t for t in path.lstrip("/").split("/")]
        if tokens and tokens[-1] == "" and len(tokens) > 1:
            tokens.pop()        # a trailing slash (split_terminator)
        first, rest = tokens[0], tokens[1:]
        vmm = self.vmm
        entry = self.table.get((method, first))
        try:
            if method == "GET" and body is not None:
                raise ApiError("GET request cannot have a body.")
            if method == "PUT" and body is None:
                raise ApiError("Empty PUT request.")
            if method == "PATCH" and body is None and first != "balloon":
                raise ApiError("Empty PATCH request.")
            if entry is None:
                raise ApiError(f"Invalid request method and/or path: {method} {first}.")
            fn = entry[0]
            with vmm.lock:
                payload = fn(vmm, body, rest)
        except ApiError as e:
            self._done(entry, True, method, path, body, e.status, e.message)
            return e.status, {"fault_message": e.message}
        except Exception as e:      # a bug in kvmvm: Firecracker's 500 shape, the server lives on
            msg = f"Internal error: {type(e).__name__}: {e}"
            self._done(entry, True, method, path, body, 500, msg)
            return 500, {"fault_message": msg}
        self._done(entry, False, method, path, body, 200 if payload is not None else 204, None)
        return (200, payload) if payload is not None else (204, None)

    def _done(self, entry, failed, method, path, body, status, msg) -> None:
        vmm = self.vmm
        if entry is not None:
            vmm.metrics.count(entry[1], entry[2], failed)
        log = vmm.logger
        if log.fd < 0:
            return
        if body is None or path == "/mmds":
            log.info(f"The API server received a {method.title()} request on \"{path}\".")
        else:
            text = body.decode("utf-8", "replace")
            log.info(f"The API server received a {method.title()} request on \"{path}\" with body {text!r}.")
        if failed:
            log.error(f"Received Error. Status code: {status} Bad Request. Message: {msg}")
        else:
            log.info(f"The request was executed successfully. Status code: {status} "
                     f"{'OK' if status == 200 else 'No Content'}.")
