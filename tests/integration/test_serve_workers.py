"""`otel-bridge serve --workers N`: N receiver processes share the OTLP ports with SO_REUSEPORT,
a dead one is restarted, SIGTERM stops them all; tested as a real process tree."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.reliability.receiver_process import wait_serving

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
SERVING = re.compile(rb"(\d+) receiver processes sharing OTLP/gRPC 127\.0\.0\.1:(\d+)")


def server_spans(batch: int, count: int = 10) -> bytes:
    """`count` HTTP SERVER spans, one api_performance_metrics row each, ids unique per batch."""
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    now = time.time_ns()
    for i in range(count):
        span = scope.spans.add(
            trace_id=(batch * 1000 + i + 1).to_bytes(16, "big"), span_id=(i + 1).to_bytes(8, "big"),
            name="GET /items", kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=now,
            end_time_unix_nano=now + 5_000_000,
        )  # fmt: skip
        span.attributes.extend([
            KeyValue(key="http.request.method", value=AnyValue(string_value="GET")),
            KeyValue(key="http.route", value=AnyValue(string_value="/items")),
            KeyValue(key="http.response.status_code", value=AnyValue(int_value=200)),
        ])  # fmt: skip
    return request.SerializeToString()


class Serving:
    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process, self.log = process, log
        deadline = time.monotonic() + 90
        while not (match := SERVING.search(log.read_bytes())):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve --workers did not start:\n{log.read_text()}")
            time.sleep(0.2)
        self.port = int(match[2])
        self.wait_serving()

    def wait_serving(self) -> None:
        wait_serving(self.process, f"127.0.0.1:{self.port}", self.log, 60.0)

    def receivers(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children()


@pytest.fixture
def serve_workers(db_url: str, tmp_path: Path) -> Iterator[Any]:
    """`serve_workers(workers, grpc_listen)` -> a running `otel-bridge serve --workers`."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(workers: int = 2, grpc_listen: str = "127.0.0.1:0") -> Serving:
        log = tmp_path / f"serve-{len(processes)}.log"
        env = {**os.environ, "OTEL_BRIDGE_DATABASE_URL": db_url, "OTEL_BRIDGE_DATA_DIR": str(tmp_path),
               "OTEL_BRIDGE_GRPC_LISTEN": grpc_listen, "OTEL_BRIDGE_HTTP_LISTEN": "127.0.0.1:0",
               "OTEL_BRIDGE_MAINTENANCE_INTERVAL_S": "0", "OTEL_BRIDGE_IP_HASH_KEY": "test-key-0123456789abcdef"}  # fmt: skip
        with log.open("wb") as out:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "otel_bridge.cli", "serve", "--workers", str(workers)],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            ))  # fmt: skip
        return Serving(processes[-1], log)

    yield start
    for process in processes:
        if process.poll() is None:
            for receiver in psutil.Process(process.pid).children():
                receiver.kill()
            process.kill()
            process.wait()


def test_receivers_share_the_port_and_every_export_is_stored(
    serve_workers: Any, db_url: str, rows: Any
) -> None:
    serving = serve_workers(workers=2)
    receivers = serving.receivers()
    assert len(receivers) == 2
    # One connection per sender (no shared subchannel), as separate apps or Collectors have.
    channels = [grpc.insecure_channel(f"127.0.0.1:{serving.port}", options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(16)]  # fmt: skip
    try:
        for batch, channel in enumerate(channels):
            channel.unary_unary(EXPORT)(server_spans(batch), timeout=30)
        # The kernel spread the 16 connections over both receivers (all on one: p = 2 / 2^16).
        served = {r.pid: sum(1 for c in r.net_connections("tcp") if c.laddr.port == serving.port
                             and c.status == psutil.CONN_ESTABLISHED) for r in receivers}  # fmt: skip
        assert sum(served.values()) == 16 and all(served.values()), served
    finally:
        for channel in channels:
            channel.close()
    assert rows(
        db_url, "SELECT count(*), count(DISTINCT trace_id) FROM api_performance_metrics"
    ) == [(160, 160)]

    # A receiver that dies is replaced; the group keeps serving.
    victim = receivers[1]
    victim.kill()
    deadline = time.monotonic() + 30
    while {r.pid for r in serving.receivers()} in ({receivers[0].pid}, {r.pid for r in receivers}):
        assert time.monotonic() < deadline, "the dead receiver was not restarted"
        time.sleep(0.2)
    assert len(serving.receivers()) == 2
    serving.wait_serving()
    for batch in range(16, 24):
        with grpc.insecure_channel(
            f"127.0.0.1:{serving.port}", options=[("grpc.use_local_subchannel_pool", 1)]
        ) as ch:
            ch.unary_unary(EXPORT)(server_spans(batch), timeout=30)
    assert rows(db_url, "SELECT count(*) FROM api_performance_metrics") == [(240,)]

    # SIGTERM stops every receiver (each drains), then the parent exits 0.
    pids = [r.pid for r in serving.receivers()]
    serving.process.send_signal(signal.SIGTERM)
    assert serving.process.wait(timeout=60) == 0
    assert not [
        pid
        for pid in pids
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    log = serving.log.read_text()
    assert "exited with code -9; restarting it" in log and "stopped" in log


def test_a_port_taken_by_another_program_is_an_error_at_start(serve_workers: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError) as failed:
            serve_workers(workers=2, grpc_listen=f"127.0.0.1:{port}")
    assert f"cannot listen on 127.0.0.1:{port}" in str(failed.value)
