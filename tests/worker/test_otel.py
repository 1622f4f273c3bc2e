"""OpenTelemetry tracing (conveyor.otel, docs/hooks.md): an enqueue's trace context travels in the
job's headers into the task's span, run by a real worker, in this process and in another."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from waiting import wait_for

from conveyor import Conveyor, JobFailed, RetryPolicy, current_job
from conveyor.otel import OpenTelemetry

HERE = Path(__file__).parent


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(spans: InMemorySpanExporter) -> TracerProvider:
    p = TracerProvider()
    p.add_span_processor(SimpleSpanProcessor(spans))
    return p


def named(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name == name]


def test_the_task_span_is_a_child_of_the_enqueue_in_one_trace(
    app: Conveyor, run_worker, spans: InMemorySpanExporter, provider: TracerProvider
) -> None:
    app.hooks.append(OpenTelemetry(tracer_provider=provider))

    @app.task(queue="mail")
    def send(to: str) -> str:
        return current_job().headers["traceparent"]

    tracer = provider.get_tracer("tests")
    with tracer.start_as_current_span("POST /signup") as request:
        job = send.enqueue("ada@example.com")
    with run_worker(app, queues=["mail"]):
        traceparent = job.result(timeout=10)
        wait_for(lambda: named(spans, "process mail"), 10, "the task's span")

    (producer,) = named(spans, "send mail")
    (consumer,) = named(spans, "process mail")
    trace_id = request.get_span_context().trace_id
    assert {producer.context.trace_id, consumer.context.trace_id} == {trace_id}
    assert producer.parent is not None and producer.parent.span_id == request.get_span_context().span_id
    assert consumer.parent is not None and consumer.parent.span_id == producer.context.span_id
    flags = int(producer.context.trace_flags)
    assert traceparent == f"00-{trace_id:032x}-{producer.context.span_id:016x}-{flags:02x}"
    assert (producer.kind, consumer.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)
    assert producer.attributes == {
        "messaging.system": "conveyor",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": "mail",
        "messaging.message.id": job.id,
        "messaging.conveyor.task": send.name,
    }
    assert consumer.attributes == {
        "messaging.system": "conveyor",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "mail",
        "messaging.message.id": job.id,
        "messaging.conveyor.task": send.name,
        "messaging.conveyor.attempt": 1,
    }
    assert consumer.status.status_code is StatusCode.UNSET


def test_failures_set_error_status_with_retry_and_dead_events(
    app: Conveyor, run_worker, spans: InMemorySpanExporter, provider: TracerProvider
) -> None:
    app.hooks.append(OpenTelemetry(tracer_provider=provider))

    @app.task(retry=RetryPolicy(max_attempts=2, base=0.01, max_delay=0.02))
    async def fails() -> None:
        raise ValueError("boom")

    with run_worker(app):
        with pytest.raises(JobFailed):
            fails.enqueue().result(timeout=10)
        wait_for(lambda: len(named(spans, "process default")) == 2, 10, "both attempts' spans")

    first, second = sorted(
        named(spans, "process default"), key=lambda s: s.attributes["messaging.conveyor.attempt"]
    )
    assert [e.name for e in first.events] == ["retry", "exception"]
    assert [e.name for e in second.events] == ["dead", "exception"]
    assert {first.status.status_code, second.status.status_code} == {StatusCode.ERROR}
    (send,) = named(spans, "send default")
    assert {first.parent.span_id, second.parent.span_id} == {send.context.span_id}


def test_a_batch_is_one_send_span_parent_of_each_run(
    app: Conveyor, run_worker, spans: InMemorySpanExporter, provider: TracerProvider
) -> None:
    app.hooks.append(OpenTelemetry(tracer_provider=provider))

    @app.task
    def one(i: int) -> int:
        return i

    jobs = app.enqueue_many([one.message(i) for i in range(3)])
    with run_worker(app):
        assert [j.result(timeout=10) for j in jobs] == [0, 1, 2]
        wait_for(lambda: len(named(spans, "process default")) == 3, 10, "three task spans")
    (send,) = named(spans, "send default")
    assert send.attributes["messaging.batch.message_count"] == 3
    assert "messaging.message.id" not in send.attributes
    assert {s.parent.span_id for s in named(spans, "process default")} == {send.context.span_id}


def test_one_trace_from_the_producer_into_a_worker_process(
    tmp_path: Path, spans: InMemorySpanExporter, provider: TracerProvider
) -> None:
    sys.path.insert(0, str(HERE))
    try:
        import otel_app
    finally:
        sys.path.remove(str(HERE))
    url = f"sqlite:///{tmp_path}/otel.db"
    app = otel_app.app
    app.close()
    app.url = url
    app.hooks[:] = [OpenTelemetry(tracer_provider=provider)]  # this process exports to memory
    exported = tmp_path / "spans.jsonl"
    with provider.get_tracer("tests").start_as_current_span("POST /orders") as request:
        job = otel_app.flaky.enqueue()
    env = os.environ | {"CONVEYOR_URL": url, "PYTHONPATH": str(HERE), "OTEL_TEST_SPANS": str(exported)}
    cmd = [
        sys.executable,
        "-m",
        "conveyor.worker.process",
        "otel_app:app",
        json.dumps({"queues": ["default"]}),
    ]
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert job.result(timeout=30) == 2
        wait_for(lambda: exported.exists() and len(exported.read_text().splitlines()) >= 2, 30, "spans")
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        app.close()
    runs = [json.loads(line) for line in exported.read_text().splitlines()]
    (send,) = named(spans, "send default")
    trace_id = f"{request.get_span_context().trace_id:032x}"
    assert [(r["name"], r["trace_id"], r["parent_id"]) for r in runs] == [
        ("process default", trace_id, f"{send.context.span_id:016x}")
    ] * 2
    first, second = runs
    assert (first["attributes"]["messaging.conveyor.attempt"], first["status"], first["events"]) == (
        1,
        "ERROR",
        ["retry", "exception"],
    )
    assert (second["attributes"]["messaging.conveyor.attempt"], second["status"], second["events"]) == (
        2,
        "UNSET",
        [],
    )
