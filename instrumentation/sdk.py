"""`configure()`: the OpenTelemetry SDK wired for otel-bridge in one call.

Tracer, meter and logger providers exporting over OTLP (endpoint, headers, protocol details from
the standard `OTEL_*` variables, which the exporters read themselves), a resource with
`service.version` and `deployment.environment.name`, crash hooks, runtime metrics, psycopg
(when installed), and a flush
on SIGTERM: uvicorn re-raises SIGTERM after its own shutdown, so `atexit` never runs and queued
telemetry would be lost (DESIGN §10). The seed's switches are honoured: `APM_ENABLED` (traces and
metrics), `CRASHLYTICS_ENABLED` (crash hooks), `ANALYTICS_BATCH_SIZE` /
`ANALYTICS_BATCH_INTERVAL_MS` (the log batch), `CRASHLYTICS_RELEASE_VERSION` /
`CRASHLYTICS_ENVIRONMENT` (the resource, when not set otherwise).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry._logs import set_logger_provider
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from otel_bridge.instrumentation.asgi import active_requests
from otel_bridge.instrumentation.crash import CrashReporter
from otel_bridge.instrumentation.psycopg import instrument_psycopg
from otel_bridge.instrumentation.runtime_metrics import EventLoopLagMonitor, install_runtime_metrics

log = logging.getLogger(__name__)


# What makes the instrumentations emit what otel-bridge maps best; a user's own setting wins.
ENV_DEFAULTS = {
    "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
    # Stable HTTP and DB names (`db.query.text`, `http.request.method`, ...). Read once, by the
    # first instrumentation that starts, so set before any of them.
    "OTEL_SEMCONV_STABILITY_OPT_IN": "http,database",
    # ASGI's per-send/receive child spans carry nothing the tables need.
    "OTEL_PYTHON_ASGI_EXCLUDED_SPANS": "send,receive",
}


def apply_env_defaults() -> None:
    for name, value in ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)


def _switch(name: str) -> bool:
    return os.environ.get(name, "true").strip().lower() not in ("0", "false", "no", "off")


def _int_env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass
class Telemetry:
    """The configured providers and helpers; `shutdown()` flushes everything."""

    resource: Resource
    tracer_provider: TracerProvider | None
    meter_provider: MeterProvider | None
    logger_provider: LoggerProvider
    crash_reporter: CrashReporter | None
    lag_monitor: EventLoopLagMonitor
    _instrumentor: Any = None

    def force_flush(self, timeout_ms: int = 5000) -> None:
        for provider in (self.tracer_provider, self.meter_provider, self.logger_provider):
            if provider is not None:
                provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        self.lag_monitor.stop()
        if self._instrumentor is not None:
            self._instrumentor.uninstrument()
        for provider in (self.tracer_provider, self.meter_provider, self.logger_provider):
            if provider is not None:
                provider.shutdown()


_configured: Telemetry | None = None
_lock = threading.Lock()


def configure(
    service_name: str | None = None,
    *,
    service_version: str | None = None,
    environment: str | None = None,
    endpoint: str | None = None,
    resource_attributes: dict[str, Any] | None = None,
    span_exporter: Any = None,
    metric_exporter: Any = None,
    log_exporter: Any = None,
) -> Telemetry:
    """Set up the global providers; a second call returns the first call's Telemetry."""
    global _configured
    apply_env_defaults()
    with _lock:
        if _configured is None:
            _configured = _build(service_name, service_version, environment, endpoint, resource_attributes or {},
                                 span_exporter, metric_exporter, log_exporter)  # fmt: skip
        return _configured


def _resource(service_name: str | None, version: str | None, environment: str | None, extra: dict[str, Any]) -> Resource:
    attrs: dict[str, Any] = dict(extra)
    if service_name:
        attrs["service.name"] = service_name
    detected = Resource.create(attrs)  # adds OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME and SDK info
    fallback: dict[str, Any] = {}
    version = version or os.environ.get("CRASHLYTICS_RELEASE_VERSION")
    if version and "service.version" not in detected.attributes:
        fallback["service.version"] = version
    environment = environment or os.environ.get("CRASHLYTICS_ENVIRONMENT")
    has_environment = {"deployment.environment.name", "deployment.environment"} & set(detected.attributes)
    if environment and not has_environment:
        fallback["deployment.environment.name"] = environment
    return detected.merge(Resource(fallback)) if fallback else detected


def _build(
    service_name: str | None, version: str | None, environment: str | None, endpoint: str | None,
    extra: dict[str, Any], span_exporter: Any, metric_exporter: Any, log_exporter: Any,
) -> Telemetry:  # fmt: skip
    resource = _resource(service_name, version, environment, extra)
    exporter_args: dict[str, Any] = {"endpoint": endpoint} if endpoint else {}
    tracer_provider = meter_provider = instrumentor = None
    lag_monitor = EventLoopLagMonitor()
    if _switch("APM_ENABLED"):
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter or OTLPSpanExporter(**exporter_args)))
        trace.set_tracer_provider(tracer_provider)
        reader = PeriodicExportingMetricReader(metric_exporter or OTLPMetricExporter(**exporter_args))
        meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
        metrics.set_meter_provider(meter_provider)
        instrumentor = install_runtime_metrics(meter_provider, lag_monitor)
        instrument_psycopg(tracer_provider, meter_provider)
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(
        log_exporter or OTLPLogExporter(**exporter_args),
        max_export_batch_size=_int_env("ANALYTICS_BATCH_SIZE", 512),
        schedule_delay_millis=_int_env("ANALYTICS_BATCH_INTERVAL_MS", 5000),
    ))  # fmt: skip
    set_logger_provider(logger_provider)
    crash_reporter = None
    if _switch("CRASHLYTICS_ENABLED"):
        crash_reporter = CrashReporter(logger_provider, active_requests=active_requests)
        crash_reporter.install()
    telemetry = Telemetry(resource, tracer_provider, meter_provider, logger_provider, crash_reporter,
                          lag_monitor, instrumentor)  # fmt: skip
    atexit.register(telemetry.shutdown)
    _flush_on_sigterm(telemetry)
    return telemetry


def _flush_on_sigterm(telemetry: Telemetry) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        telemetry.force_flush()
        if callable(previous):
            previous(signum, frame)
        else:  # the default action: die of SIGTERM, as before
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
