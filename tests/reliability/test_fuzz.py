"""Fuzzing the three Export methods over real gRPC and HTTP: garbage and hypothesis-generated
protobuf never crash or hang the receiver, and bad data is never answered with a retryable code
(a sender would retry poison forever)."""

from __future__ import annotations

from typing import Any

import grpc
import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.receiver_process import uvarint

METHODS = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
}
# Protobuf-shaped noise: field tags and lengths that nest, the way a corrupted Export looks.
_varint = st.integers(min_value=0, max_value=2**35)
_field = st.tuples(st.integers(min_value=1, max_value=20), st.sampled_from([0, 1, 2, 5]), st.binary(max_size=40), _varint)


def _encode(fields: list[tuple[int, int, bytes, int]]) -> bytes:
    out = bytearray()
    for number, wire, payload, value in fields:
        out += uvarint(number << 3 | wire)
        if wire == 0:
            out += uvarint(value)
        elif wire == 1:
            out += value.to_bytes(8, "little", signed=False)[:8].ljust(8, b"\0")
        elif wire == 5:
            out += (value & 0xFFFFFFFF).to_bytes(4, "little")
        else:
            out += uvarint(len(payload)) + payload
    return bytes(out)


bodies = st.one_of(st.binary(max_size=300), st.lists(_field, max_size=12).map(_encode))
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED}


def test_fuzzed_exports_never_crash_or_ask_for_retries(bridge: Any) -> None:
    channel = grpc.insecure_channel(bridge.endpoint)
    calls = {s: channel.unary_unary(m, request_serializer=None, response_deserializer=None) for s, m in METHODS.items()}
    seen: dict[str, int] = {}

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(signal=st.sampled_from(sorted(METHODS)), body=bodies)
    def exchange(signal: str, body: bytes) -> None:
        try:
            calls[signal](body, timeout=10)
            seen["ok"] = seen.get("ok", 0) + 1
        except grpc.RpcError as exc:
            assert exc.code() not in RETRYABLE, f"{signal}: {exc.code()} {exc.details()}"
            assert exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED, "the receiver hung"
            seen[exc.code().name] = seen.get(exc.code().name, 0) + 1
        answer = httpx.post(f"http://{bridge.http_endpoint}/v1/{signal}", content=body,
                            headers={"content-type": "application/x-protobuf"}, timeout=10)  # fmt: skip
        assert answer.status_code in (200, 400), answer.text

    exchange()
    channel.close()
    assert seen.get("INVALID_ARGUMENT", 0) > 0  # the fuzzer did reach the error path
    with grpc.insecure_channel(bridge.endpoint) as again:  # and the server still serves
        again.unary_unary(METHODS["logs"], request_serializer=None, response_deserializer=None)(b"", timeout=10)
