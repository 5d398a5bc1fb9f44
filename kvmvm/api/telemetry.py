"""PUT /logger and PUT /metrics (pre-boot): Firecracker's log and metrics sinks."""

from __future__ import annotations

from kvmvm.api.fields import opt, parse_body, req

LOGGER = {"log_path": opt("str"), "level": opt(("Error", "Warning", "Info", "Debug", "Trace", "Off",
                                                 "error", "warning", "info", "debug", "trace", "off",
                                                 "ERROR", "WARNING", "INFO", "DEBUG", "TRACE", "OFF")),
          "show_level": opt("bool"), "show_log_origin": opt("bool"), "module": opt("str")}
METRICS = {"metrics_path": req("str")}


def put_logger(vmm, body, rest):
    cfg = parse_body(body, LOGGER)
    vmm.preboot()
    vmm.logger.configure(cfg)


def put_metrics(vmm, body, rest):
    cfg = parse_body(body, METRICS)
    vmm.preboot()
    vmm.metrics.configure(cfg)


ROUTES = [
    ("PUT", "logger", put_logger, "put_api_requests", "logger"),
    ("PUT", "metrics", put_metrics, "put_api_requests", "metrics"),
]
