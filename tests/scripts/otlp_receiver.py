#!/usr/bin/env python3
"""A real OTLP/gRPC trace receiver for the telemetry suite (tests/tests/telemetry.rs).

It serves OpenTelemetry's TraceService on 127.0.0.1 (port 0 picks a free one), writes the port
it got as `listening <port>` on stdout once it serves, and appends every span it receives to
OUT as one JSON object per line:

    {"service": "baton-builder", "trace_id": "<32 hex>", "span_id": "<16 hex>",
     "parent_span_id": "<16 hex or empty>", "name": "...", "kind": "SPAN_KIND_PRODUCER",
     "start_ns": 1, "end_ns": 2, "status": "STATUS_CODE_UNSET",
     "attributes": {"key": value, ...}, "links": [{"trace_id": ..., "span_id": ...}]}

Usage: otlp_receiver.py OUT [PORT]. Needs PyPI's opentelemetry-proto and grpcio (`just setup`).
"""

import json
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2


def value_of(any_value):
    """The Python value of an OTLP AnyValue."""
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value_of(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value_of(kv.value) for kv in any_value.kvlist_value.values}
    if kind == "bytes_value":
        return any_value.bytes_value.hex()
    return getattr(any_value, kind)


def attributes(key_values):
    return {kv.key: value_of(kv.value) for kv in key_values}


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Writes each exported span as a JSON line."""

    def __init__(self, out):
        self.out = out
        self.lock = threading.Lock()

    def Export(self, request, context):
        lines = []
        for resource_spans in request.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    lines.append(
                        json.dumps(
                            {
                                "service": resource.get("service.name", ""),
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_span_id": span.parent_span_id.hex(),
                                "name": span.name,
                                "kind": trace_pb2.Span.SpanKind.Name(span.kind),
                                "start_ns": span.start_time_unix_nano,
                                "end_ns": span.end_time_unix_nano,
                                "status": trace_pb2.Status.StatusCode.Name(span.status.code),
                                "attributes": attributes(span.attributes),
                                "links": [
                                    {"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex()}
                                    for link in span.links
                                ],
                            }
                        )
                    )
        with self.lock:
            with open(self.out, "a", encoding="utf-8") as f:
                for line in lines:
                    f.write(line + "\n")
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: otlp_receiver.py OUT [PORT]")
    out = sys.argv[1]
    port = int(sys.argv[2]) if len(sys.argv) == 3 else 0
    open(out, "a", encoding="utf-8").close()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(out), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"listening {bound}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
