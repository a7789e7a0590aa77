"""OpenTelemetry traces, opt-in: off unless an ``OTEL_*`` exporter is configured.

Tracing is switched on at start-up by ``configure_from_env`` when ``OTEL_TRACES_EXPORTER``
names an exporter (``otlp``, ``console``) or an OTLP endpoint is set
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), and the SDK is
installed (``pip install 'realtime-channels[otel]'``).  Otherwise nothing here imports
``opentelemetry``: ``ENABLED`` stays false, ``span`` returns one shared object that does
nothing, and the callers on per-message paths test ``ENABLED`` before calling in at all.

The SDK reads the rest of its configuration itself: ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES`` (the service is ``realtime-channels`` unless named),
``OTEL_EXPORTER_OTLP_*`` (endpoint, headers, timeout), ``OTEL_TRACES_SAMPLER`` and
``OTEL_BSP_*`` (batching).

Spans (docs/observability.md lists them with their attributes):

* ``realtime.join`` — from the ``phx_join`` frame read to its ``phx_reply`` written (or, for a
  refusal paced by ``REALTIME_JOIN_ERROR_BACKOFF_MS``, scheduled), across the asynchronous
  steps between (gates, policy checks, the postgres_changes subscription).  Its children:
  ``realtime.verify_token`` and, for a private channel, ``realtime.authorize``.
* ``realtime.rest.broadcast`` — one REST broadcast request.
* ``realtime.cdc.transaction`` — one committed transaction routed to postgres_changes
  subscribers, with ``realtime.cdc.rls`` (one per RLS table) and ``realtime.cdc.fanout``.

The protocol layer (``protocol/``) knows nothing of this; the spans are made by the adapters
that run its effects.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ContextManager, Protocol, TypeVar

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

__all__ = ["ENABLED", "configure_from_env", "disable", "enable", "span"]

log = logging.getLogger(__name__)

#: True once a tracer provider is installed; tested on the hot paths before anything else.
ENABLED = False
_tracer: Tracer | None = None
#: the joins waiting for their reply, by (connection, topic, ref of the join)
_joins: dict[tuple[int, str, str | None], Span] = {}

T = TypeVar("T")
DEFAULT_SERVICE_NAME = "realtime-channels"


class SpanLike(Protocol):
    def set_attribute(self, key: str, value: Any) -> Any: ...


class _NoSpan:
    """What ``span`` returns with tracing off: a context manager and a span that do nothing."""

    __slots__ = ()

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set_attribute(self, key: str, value: Any) -> None:
        return None


_NO_SPAN = _NoSpan()


def _attributes(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if v is not None}


def span(name: str, **attrs: Any) -> ContextManager[SpanLike]:
    """A child of the current span for the ``with`` block (``None`` attributes are left out);
    an exception leaving the block is recorded on it.  Does nothing with tracing off."""
    if _tracer is None:
        return _NO_SPAN
    return _tracer.start_as_current_span(name, attributes=_attributes(attrs))


# --- joins: a span across the asynchronous steps of one join -------------------------------


def join(conn_id: int, topic: str, ref: str | None, payload: Any) -> ContextManager[object]:
    """Opens ``realtime.join`` and makes it current while the frame is handled, so that the
    tasks started meanwhile (policy checks, gates) are its children; ``replied`` ends it."""
    assert _tracer is not None
    from opentelemetry import trace

    config = payload.get("config") if isinstance(payload, dict) else None
    private = config.get("private") if isinstance(config, dict) else None
    private = private if isinstance(private, bool) else str(private).lower() == "true"
    started = _tracer.start_span("realtime.join", attributes={"topic": topic, "private": private})
    superseded = _joins.pop((conn_id, topic, ref), None)
    if superseded is not None:
        superseded.end()
    _joins[(conn_id, topic, ref)] = started
    return trace.use_span(started, end_on_exit=False)


def replied(conn_id: int, topic: str, event: str, ref: str | None, payload: Any, delay: float) -> None:
    """A message is being sent: when it is the reply to a join, that join's span ends."""
    if event != "phx_reply":
        return
    started = _joins.pop((conn_id, topic, ref), None)
    if started is None:
        return
    from opentelemetry.trace import Status, StatusCode

    status = payload.get("status") if isinstance(payload, dict) else None
    started.set_attribute("status", str(status))
    if delay > 0:
        started.set_attribute("reply_delay_s", delay)
    if status != "ok":
        response = payload.get("response") if isinstance(payload, dict) else None
        reason = response.get("reason") if isinstance(response, dict) else None
        started.set_status(Status(StatusCode.ERROR, str(reason) if reason is not None else None))
    started.end()


def connection_closed(conn_id: int) -> None:
    """The joins of a socket that closed before their reply end, marked ``abandoned``."""
    for key in [k for k in _joins if k[0] == conn_id]:
        started = _joins.pop(key)
        started.set_attribute("abandoned", True)
        started.end()


def verifier(verify: Callable[[str, float], T]) -> Callable[[str, float], T]:
    """``verify`` as is with tracing off; else each call inside a join is a
    ``realtime.verify_token`` span (re-checks outside a join are not traced)."""
    if _tracer is None:
        return verify
    from opentelemetry import trace

    tracer = _tracer

    def traced(token: str, now: float) -> T:
        if not trace.get_current_span().is_recording():
            return verify(token, now)
        with tracer.start_as_current_span("realtime.verify_token"):
            return verify(token, now)

    return traced


# --- set-up ----------------------------------------------------------------------------------


def enable(provider: TracerProvider) -> None:
    """Trace to ``provider`` from now on (tests pass one with an in-memory exporter)."""
    global ENABLED, _tracer
    from . import __version__

    _tracer = provider.get_tracer("realtime_channels", __version__)
    ENABLED = True


def disable() -> None:
    global ENABLED, _tracer
    ENABLED, _tracer = False, None
    _joins.clear()


def _exporter_names(environ: Mapping[str, str]) -> list[str]:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    raw = environ.get("OTEL_TRACES_EXPORTER")
    if raw is None:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return ["otlp"] if endpoint else []
    return [n for n in (part.strip().lower() for part in raw.split(",")) if n and n != "none"]


def _exporter(name: str, environ: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # one span per line on stdout (the log is on stderr)
        return ConsoleSpanExporter(out=sys.stdout, formatter=lambda s: s.to_json(indent=None) + "\n")
    if name == "otlp":
        protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                    or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
        if protocol == "grpc":
            import importlib

            try:  # not in the [otel] extra: used when installed
                grpc = importlib.import_module("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
            except ImportError:
                log.warning("tracing: OTLP over gRPC needs opentelemetry-exporter-otlp-proto-grpc; "
                            "exporting over HTTP (http/protobuf) instead")
            else:
                return grpc.OTLPSpanExporter()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    log.warning("tracing: unknown OTEL_TRACES_EXPORTER %r ignored (known: otlp, console, none)", name)
    return None


def configure_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """Switch tracing on when the environment asks for an exporter; True when it is on."""
    env = os.environ if environ is None else environ
    names = _exporter_names(env)
    if not names:
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("tracing: OTEL_* asks for %s, but the OpenTelemetry SDK is not installed "
                    "(pip install 'realtime-channels[otel]'); not tracing", ", ".join(names))
        return False
    try:
        exporters = [e for e in (_exporter(n, env) for n in names) if e is not None]
    except ImportError as exc:
        log.warning("tracing: an exporter is not installed (%s); not tracing", exc)
        return False
    if not exporters:
        return False
    from . import __version__

    resource = Resource.create({SERVICE_VERSION: __version__})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    enable(provider)
    log.info("tracing: exporting spans (%s) as service %s", ", ".join(names), resource.attributes.get(SERVICE_NAME))
    return True

