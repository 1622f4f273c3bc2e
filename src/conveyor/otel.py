"""OpenTelemetry tracing as a hook: ``app.hooks.append(OpenTelemetry())`` (docs/hooks.md).

Needs the OpenTelemetry API (``pip install 'conveyor-queue[otel]'``); the application configures
the SDK. An enqueue is a PRODUCER span whose W3C trace context travels in the job's headers; each
attempt is a CONSUMER span, child of that context, in whatever process runs it. Attributes follow
the OpenTelemetry messaging semantic conventions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from conveyor.errors import ConfigurationError

try:
    from opentelemetry import propagate, trace
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import SpanKind
    from opentelemetry.util.types import AttributeValue
except ImportError as exc:  # pragma: no cover - exercised by tests/unit/test_missing_extra.py
    raise ConfigurationError(
        "conveyor.otel needs the OpenTelemetry API, missing here: pip install 'conveyor-queue[otel]'"
    ) from exc

from conveyor import __version__
from conveyor.context import JobContext
from conveyor.hooks import Hook, with_headers
from conveyor.records import Message

SYSTEM = "conveyor"


class OpenTelemetry(Hook):
    """Traces enqueues and runs; see docs/hooks.md.

    Args:
        tracer_provider: the provider of the tracer; defaults to the global one.
        propagator: how the trace context is written into headers and read back; defaults to
            the global propagator (W3C trace context and baggage unless configured otherwise).
    """

    def __init__(
        self, tracer_provider: trace.TracerProvider | None = None, propagator: TextMapPropagator | None = None
    ) -> None:
        self._tracer = trace.get_tracer("conveyor", __version__, tracer_provider=tracer_provider)
        self._propagator = propagator

    @contextlib.contextmanager
    def enqueue(self, messages: list[Message]) -> Iterator[list[Message]]:
        queues = {m.queue for m in messages}
        attributes: dict[str, AttributeValue] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
        }
        queue = next(iter(queues)) if len(queues) == 1 else None
        if queue is not None:
            attributes["messaging.destination.name"] = queue
        if len(messages) == 1:
            attributes["messaging.message.id"] = messages[0].id
            attributes["messaging.conveyor.task"] = messages[0].task
        else:
            attributes["messaging.batch.message_count"] = len(messages)
        name = f"send {queue}" if queue is not None else "send"
        with self._tracer.start_as_current_span(name, kind=SpanKind.PRODUCER, attributes=attributes):
            carrier: dict[str, str] = {}
            if self._propagator is None:
                propagate.inject(carrier)
            else:
                self._propagator.inject(carrier)
            yield [with_headers(m, **carrier) for m in messages] if carrier else messages

    @contextlib.contextmanager
    def run(self, job: JobContext) -> Iterator[None]:
        headers: Any = dict(job.headers)
        if self._propagator is None:
            parent = propagate.extract(headers) if headers else None
        else:
            parent = self._propagator.extract(headers) if headers else None
        attributes: dict[str, AttributeValue] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": job.queue,
            "messaging.message.id": job.id,
            "messaging.conveyor.task": job.task,
            "messaging.conveyor.attempt": job.attempt,
        }
        with self._tracer.start_as_current_span(
            f"process {job.queue}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        ):
            yield

    def retry(self, job: JobContext, error: BaseException, delay: float) -> None:
        trace.get_current_span().add_event(
            "retry",
            {
                "messaging.conveyor.attempt": job.attempt,
                "messaging.conveyor.retry_delay": delay,
                "exception.type": type(error).__qualname__,
            },
        )

    def dead(self, job: JobContext, error: BaseException) -> None:
        trace.get_current_span().add_event(
            "dead", {"messaging.conveyor.attempt": job.attempt, "exception.type": type(error).__qualname__}
        )
