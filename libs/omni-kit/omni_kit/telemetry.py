"""OpenTelemetry set-up from the standard OTEL_* variables.

OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER choose "otlp", "console" or "none" (the default, so tests and
the embedded run export nothing unless asked). OTEL_EXPORTER_OTLP_ENDPOINT and the other OTLP variables are
read by the exporters themselves. Custom span attributes are namespaced `omni.*`:

- omni.person_id: the person a call or event concerns.
- omni.event_type: the type of a tracked or published event.
"""

from __future__ import annotations

import logging
import os

from opentelemetry import metrics, trace
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)


def setup_telemetry(service_name: str) -> None:
    """Install tracer and meter providers for this process, as the OTEL_* variables say."""
    os.environ.setdefault("OTEL_SERVICE_NAME", f"omni-{service_name}")
    resource = Resource.create({SERVICE_NAME: os.environ["OTEL_SERVICE_NAME"]})
    traces = os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    if traces != "none" and not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider(resource=resource)
        for name in traces.split(","):
            if name == "otlp":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

                provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            elif name == "console":
                provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
            else:
                raise ValueError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r}")
        trace.set_tracer_provider(provider)
    metrics_exporter = os.environ.get("OTEL_METRICS_EXPORTER", "none").strip().lower()
    if metrics_exporter != "none":
        if metrics_exporter == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

            reader = PeriodicExportingMetricReader(OTLPMetricExporter())
        elif metrics_exporter == "console":
            reader = PeriodicExportingMetricReader(ConsoleMetricExporter())
        else:
            raise ValueError(f"OTEL_METRICS_EXPORTER: unknown exporter {metrics_exporter!r}")
        metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))


def tracing_enabled() -> bool:
    """True when this process records spans (an SDK tracer provider is installed).

    With tracing off, the gRPC and database instrumentation is left out altogether rather than run against
    a no-op provider: it costs a noticeable share of a small call's CPU.
    """
    return isinstance(trace.get_tracer_provider(), TracerProvider)


def instrument_engine(engine: AsyncEngine) -> None:
    """Emit a span per database statement of this engine.

    The instrumentor's instrument() acts once per process, and a process may hold several engines (the
    end-to-end tests run all five services in one), so each engine gets its own EngineTracer.
    """
    if not tracing_enabled():
        return
    usage = metrics.get_meter("omni_kit.db").create_up_down_counter(
        "db.client.connections.usage", unit="connections", description="Connections in use or idle, by state."
    )
    EngineTracer(trace.get_tracer("omni_kit.db"), engine.sync_engine, usage)
