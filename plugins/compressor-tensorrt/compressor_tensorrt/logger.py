"""TensorRT's log, routed to the `compressor` logger (so it lands in compressor.log), with
its errors kept to explain a failed parse, build or deserialization."""
from __future__ import annotations

import logging

log = logging.getLogger("compressor.tensorrt")


def make_logger(trt):
    """A trt.ILogger subclass instance; keep it alive as long as the objects given it."""

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)  # the documented way to subclass TensorRT's logger
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
                log.error(msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.warning(msg)
            else:
                log.debug(msg)

        def last_error(self, default: str) -> str:
            return self.errors[-1].strip().splitlines()[0] if self.errors else default

    return Logger()
