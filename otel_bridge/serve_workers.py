"""`otel-bridge serve --workers N`: N receiver processes sharing the OTLP ports with SO_REUSEPORT.

One receiver process uses at most one core (gRPC, parsing and mapping are Python), so a busy host
runs several. The parent does once what must happen once (start an embedded database, migrate,
create partitions), reserves the listen ports, then runs N `otel-bridge serve` children with
OTEL_BRIDGE_REUSE_PORT: the kernel spreads client connections over them, and nothing crosses a
process boundary per request. A child that dies is restarted. SIGTERM or SIGINT stops the
children first (each drains: every acknowledged Export is committed), then the embedded database.

The kernel balances connections, not requests: one long-lived connection (a single Collector
exporter) stays on one process. For that case the ingest worker pool
(OTEL_BRIDGE_INGEST_WORKERS) spreads one receiver's requests over cores instead.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

from otel_bridge.config import Config
from otel_bridge.database import ensure_partitions, migrate, redact_url, resolve_database

log = logging.getLogger(__name__)

# After their OTEL_BRIDGE_SHUTDOWN_GRACE_S, children still finish the transactions they are in.
STOP_AFTER_GRACE_S = 25.0
FAST_EXIT_S = 10.0  # a child exiting sooner than this after its start is failing, not crashing
MAX_FAST_EXITS = 3


def reserve_port(listen: str) -> tuple[socket.socket, str]:
    """Bind (without listening) a SO_REUSEPORT socket on `listen`: it turns port 0 into a real
    port every child can share, and reports a port already taken before any child starts. Only
    listening sockets receive connections, so this one never steals any."""
    host, _, port = listen.rpartition(":")
    family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]") or None, int(port),
                                                         type=socket.SOCK_STREAM)[0]  # fmt: skip
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {listen}: {exc.strerror}") from None
    return sock, f"{host}:{sock.getsockname()[1]}"


@dataclass
class _Child:
    index: int
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    fast_exits: int = 0


class ServeWorkers:
    """The parent of `serve --workers N`."""

    def __init__(self, config: Config, workers: int) -> None:
        self.config = config
        self.workers = workers
        self._stop = threading.Event()
        self._children: list[_Child] = []

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())
        url, embedded = resolve_database(self.config)
        try:
            log.info("database: %s", redact_url(url))
            migrate(url)
            ensure_partitions(url)
            grpc_sock, grpc_listen = reserve_port(self.config.grpc_listen)
            http_sock, http_listen = reserve_port(self.config.http_listen)
            with (
                grpc_sock,
                http_sock,
                tempfile.TemporaryDirectory(prefix="otel-bridge-metrics-") as metrics_dir,
            ):
                env = self._child_env(url, grpc_listen, http_listen, metrics_dir)
                self._children = [_Child(i, self._spawn(i, env)) for i in range(self.workers)]
                log.info("%d receiver processes sharing OTLP/gRPC %s and OTLP/HTTP %s (pids %s)", self.workers,
                         grpc_listen, http_listen, ", ".join(str(c.process.pid) for c in self._children))  # fmt: skip
                code = self._supervise(env)
                self._stop_children()
                return code
        finally:
            if embedded is not None:
                embedded.stop()

    def _child_env(
        self, url: str, grpc_listen: str, http_listen: str, metrics_dir: str
    ) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "OTEL_BRIDGE_DATABASE_URL": url, "OTEL_BRIDGE_GRPC_LISTEN": grpc_listen,
            "OTEL_BRIDGE_HTTP_LISTEN": http_listen, "OTEL_BRIDGE_REUSE_PORT": "true", "OTEL_BRIDGE_WORKERS": "1",
        })  # fmt: skip
        # Each receiver maps in its own process already; a worker pool per receiver would only
        # add processes competing for the same cores (unless asked for explicitly).
        env.setdefault("OTEL_BRIDGE_INGEST_WORKERS", "0")
        # Prometheus counters of every receiver, summed at scrape time by whichever one answers.
        env.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics_dir)
        return env

    def _spawn(self, index: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "otel_bridge.cli", "serve", "--worker-index", str(index)]
        # Its own session: a terminal's Ctrl-C reaches the parent, which stops children in order.
        return subprocess.Popen(command, env=env, start_new_session=True)

    def _supervise(self, env: dict[str, str]) -> int:
        """Restart children that die, until asked to stop; 1 if one keeps failing at start."""
        while not self._stop.wait(0.5):
            for child in self._children:
                code = child.process.poll()
                if code is None:
                    continue
                fast = time.monotonic() - child.started < FAST_EXIT_S
                child.fast_exits = child.fast_exits + 1 if fast else 0
                if child.fast_exits >= MAX_FAST_EXITS:
                    log.error(
                        "receiver process %d keeps exiting at start (exit code %s); stopping",
                        child.index,
                        code,
                    )
                    return 1
                log.error("receiver process %d (pid %d) exited with code %s; restarting it",
                          child.index, child.process.pid, code)  # fmt: skip
                self._forget_metrics(env, child.process.pid)
                child.process, child.started = self._spawn(child.index, env), time.monotonic()
        log.info("shutting down: stopping %d receiver processes", len(self._children))
        return 0

    def _stop_children(self) -> None:
        for child in self._children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        limit_s = self.config.shutdown_grace_s + STOP_AFTER_GRACE_S
        deadline = time.monotonic() + limit_s
        for child in self._children:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error(
                    "receiver process %d did not stop within %.0f s; killing it",
                    child.index,
                    limit_s,
                )
                child.process.kill()
                child.process.wait()
        log.info("stopped")

    @staticmethod
    def _forget_metrics(env: dict[str, str], pid: int) -> None:
        """A dead process's live gauges must not be summed any more."""
        directory = env.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            try:
                from prometheus_client import multiprocess
            except ImportError:
                return
            multiprocess.mark_process_dead(pid, directory)
