"""Optional OpenTelemetry traces (``IMGFARM_OTEL_ENABLED=true``, ``pip install imgfarm[otel]``).

One call per process, at its entry point and before it builds its app, engine or Celery
app: the standard instrumentations patch FastAPI, Celery, SQLAlchemy and botocore
globally, so a request, the task it leads to, its queries and its S3 calls become spans.
Where spans go is the OpenTelemetry SDK's standard configuration (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_TRACES_SAMPLER``, ...), read by the SDK itself. Nothing here is imported unless enabled.
"""

from __future__ import annotations

import importlib
import logging

from shared.errors import ConfigError
from shared.settings import Settings

log = logging.getLogger(__name__)

# (module, instrumentor class) of each standard instrumentation we use.
INSTRUMENTATIONS = (
    ("opentelemetry.instrumentation.fastapi", "FastAPIInstrumentor"),
    ("opentelemetry.instrumentation.celery", "CeleryInstrumentor"),
    ("opentelemetry.instrumentation.sqlalchemy", "SQLAlchemyInstrumentor"),
    ("opentelemetry.instrumentation.botocore", "BotocoreInstrumentor"),
)


def configure_tracing(settings: Settings, service_name: str) -> bool:
    """Install a tracer provider exporting OTLP and instrument the libraries; False if off.

    Raises ConfigError naming the missing package when enabled but not installed.
    """
    if not settings.otel_enabled:
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        instrumentors = [
            getattr(importlib.import_module(module), name)() for module, name in INSTRUMENTATIONS
        ]
    except ImportError as e:
        raise ConfigError(
            f"IMGFARM_OTEL_ENABLED=true but {e.name} is not installed: pip install 'imgfarm[otel]'"
        ) from e
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    for instrumentor in instrumentors:
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()
    log.info("OpenTelemetry tracing on as service %r", service_name)
    return True
