"""Requests to handlers: Firecracker's routing (method + first path segment) and its
generic errors, one request at a time under the VMM's lock, counted for the metrics.

Each endpoint group's module (its ROUTES) is imported when a request first names one of its
segments: the first answer waits for one small module, not for all of them."""

from __future__ import annotations

from kvmvm.api.errors import ApiError

# first path segment -> the module under kvmvm.api whose ROUTES serve it
SEGMENTS = {"": "instance", "version": "instance", "vm": "instance",
            "boot-source": "boot_source", "machine-config": "machine_config", "drives": "drives",
            "network-interfaces": "net", "vsock": "vsock", "entropy": "entropy",
            "serial": "serial", "logger": "telemetry", "metrics": "telemetry",
            "actions": "actions", "snapshot": "snapshot", "balloon": "unsupported",
            "cpu-config": "unsupported", "hotplug": "unsupported", "mmds": "unsupported",
            "pmem": "unsupported"}


def group_routes(group: str) -> dict:
    """{(method, segment): (handler, metric group, metric)} of one endpoint group."""
    module = __import__(f"kvmvm.api.{group}", fromlist=["ROUTES"])     # not importlib: lean
    return {(method, segment): (fn, metric_group, metric) for method, segment, fn, metric_group, metric
            in module.ROUTES}


def route_table() -> dict:
    """Every route (all groups imported)."""
    table = {}
    for g in sorted(set(SEGMENTS.values())):
        table.update(group_routes(g))
    return table


class Router:
    """`router(method, target, body)` -> (status, payload or None)."""

    def __init__(self, vmm, table: dict | None = None):
        self.vmm = vmm
        self.table = dict(table) if table else {}
        self._loaded = set(SEGMENTS.values()) if table else set()

    def _entry(self, method: str, first: str):
        group = SEGMENTS.get(first)
        if group is not None and group not in self._loaded:
            routes = group_routes(group)        # the same routes whichever thread loads them
            self.table.update(routes)
            self._loaded.add(group)
        return self.table.get((method, first))

    def __call__(self, method: str, target: str, body: bytes | None):
        path = target.split("?", 1)[0]
        tokens = [t for t in path.lstrip("/").split("/")]
        if tokens and tokens[-1] == "" and len(tokens) > 1:
            tokens.pop()        # a trailing slash (split_terminator)
        first, rest = tokens[0], tokens[1:]
        vmm = self.vmm
        entry = None
        try:
            entry = self._entry(method, first)
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
