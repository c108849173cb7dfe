"""`otel-bridge serve` as a child process, for tests that measure the receiver's own memory with
psutil (an in-process receiver would share its RSS with the test and its clients)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import psutil
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc

from otel_bridge.database import migrate

MIB = 1024 * 1024


@dataclass
class ServeProcess:
    """A running `otel-bridge serve` on free 127.0.0.1 ports; `stop()` ends it (SIGTERM)."""

    process: subprocess.Popen[bytes]
    endpoint: str
    http_endpoint: str
    database_url: str
    log: Path

    @classmethod
    def start(cls, db_url: str, root: Path, **env: str) -> ServeProcess:
        grpc_port, http_port = free_port(), free_port()
        environment = {
            **os.environ,
            "OTEL_BRIDGE_DATABASE_URL": db_url,
            "OTEL_BRIDGE_DATA_DIR": str(root),
            "OTEL_BRIDGE_GRPC_LISTEN": f"127.0.0.1:{grpc_port}",
            "OTEL_BRIDGE_HTTP_LISTEN": f"127.0.0.1:{http_port}",
            "OTEL_BRIDGE_MAINTENANCE_INTERVAL_S": "0",
            "OTEL_BRIDGE_LOG_LEVEL": "WARNING",
            "OTEL_BRIDGE_IP_HASH_KEY": "test-key-0123456789abcdef",
            **env,
        }
        log = root / "receiver.log"
        with log.open("wb") as out:  # the child keeps its own descriptor
            process = subprocess.Popen(
                [str(Path(sys.executable).parent / "otel-bridge"), "serve"],
                env=environment,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        serving = cls(process, f"127.0.0.1:{grpc_port}", f"127.0.0.1:{http_port}", db_url, log)
        try:
            serving.wait_serving()
        except BaseException:
            serving.stop()
            raise
        return serving

    def wait_serving(self, timeout_s: float = 90.0) -> None:
        wait_serving(self.process, self.endpoint, self.log, timeout_s, http_endpoint=self.http_endpoint)

    def log_tail(self, chars: int = 3000) -> str:
        return _tail(self.log, chars)

    def rss_mib(self) -> tuple[float, float]:
        """(process + its ingest workers, process alone) resident set size in MiB."""
        process = psutil.Process(self.process.pid)
        own = process.memory_info().rss
        total = own
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total / MIB, own / MIB

    @contextlib.contextmanager
    def peak_rss(self, interval_s: float = 0.02) -> Iterator[list[float]]:
        """Yields [max total, max process] RSS in MiB, sampled until the block ends."""
        peak = list(self.rss_mib())
        done = threading.Event()

        def sample() -> None:
            while not done.wait(interval_s):
                with contextlib.suppress(psutil.Error):
                    peak[:] = [max(a, b) for a, b in zip(peak, self.rss_mib())]

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            yield peak
        finally:
            done.set()
            sampler.join()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_serving(
    process: subprocess.Popen[bytes],
    endpoint: str,
    log: Path,
    timeout_s: float = 90.0,
    http_endpoint: str | None = None,
) -> None:
    """Until `otel-bridge serve` at `endpoint` reports SERVING over grpc.health.v1 (and, given
    `http_endpoint`, its HTTP receiver answers too); fails with the log's tail if it exits."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(endpoint) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert process.poll() is None, f"serve exited {process.returncode}:\n{_tail(log)}"
            with contextlib.suppress(grpc.RpcError, httpx.TransportError):
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    if http_endpoint is not None:  # HTTP starts after gRPC reports SERVING
                        httpx.get(f"http://{http_endpoint}/v1/traces", timeout=1)
                    return
            time.sleep(0.2)
    raise TimeoutError(f"serve not serving after {timeout_s} s:\n{_tail(log)}")


def _tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def migrated_database(pg_server: Any, name: str) -> str:
    """A new migrated database `name` on the session's PostgreSQL (conftest's `pg_server`)."""
    with psycopg.connect(pg_server.uri, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = str(pg_server.url(name))
    migrate(url)
    return url


def padded(payload: bytes, size: int) -> bytes:
    """`payload` grown to `size` bytes by an unknown field (number 1000) that parsing keeps and
    mapping ignores: a big Export that costs little CPU to store."""
    pad = size - len(payload) - 8
    return payload + uvarint(1000 << 3 | 2) + uvarint(pad) + bytes(pad)


def uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
