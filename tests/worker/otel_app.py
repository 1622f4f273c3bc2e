"""An application traced with OpenTelemetry, for a worker process of test_otel.py: its spans
are written as JSON lines to $OTEL_TEST_SPANS when each ends."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from conveyor import Conveyor, RetryPolicy, current_job
from conveyor.otel import OpenTelemetry


class FileExporter(SpanExporter):
    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self.path, "a", encoding="utf-8") as f:
            for s in spans:
                ctx, parent = s.get_span_context(), s.parent
                record = {
                    "name": s.name,
                    "trace_id": f"{ctx.trace_id:032x}" if ctx else None,
                    "parent_id": f"{parent.span_id:016x}" if parent else None,
                    "kind": s.kind.name,
                    "status": s.status.status_code.name,
                    "attributes": dict(s.attributes or {}),
                    "events": [e.name for e in s.events],
                }
                f.write(json.dumps(record) + "\n")
        return SpanExportResult.SUCCESS


provider = TracerProvider()
if os.environ.get("OTEL_TEST_SPANS"):
    provider.add_span_processor(SimpleSpanProcessor(FileExporter(os.environ["OTEL_TEST_SPANS"])))

app = Conveyor(hooks=[OpenTelemetry(tracer_provider=provider)])


@app.task(retry=RetryPolicy(max_attempts=2, base=0.01, max_delay=0.02))
def flaky() -> int:
    if current_job().attempt == 1:
        raise ConnectionError("first attempt fails")
    return current_job().attempt
