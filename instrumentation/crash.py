"""Crash reports: uncaught exceptions become `app.crash` log records, flushed before the process
dies (DESIGN §5-6: exception.*, `otel_bridge.crash.type`, memory and performance maps, the
breadcrumb trail).

Covers `sys.excepthook` (the main thread), `threading.excepthook` (other threads) and asyncio
loop exception handlers; each chains to the hook it replaced, so the app's own handling and the
usual traceback still happen. A failure in here is logged, never raised into the dying app.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from opentelemetry._logs import SeverityNumber, get_logger_provider

from otel_bridge import conventions as conv
from otel_bridge.instrumentation.breadcrumbs import current_breadcrumbs

log = logging.getLogger(__name__)

_STARTED = time.monotonic()
FLUSH_TIMEOUT_MS = 5000


def _memory() -> dict[str, float]:
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    memory = {"peak_rss_mb": round(peak_kb / 1024, 1)}
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        memory["rss_mb"] = round(pages * os.sysconf("SC_PAGE_SIZE") / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        memory["rss_mb"] = memory["peak_rss_mb"]
    return memory


@dataclass
class CrashReporter:
    """Emits crash records through the global (or given) LoggerProvider."""

    logger_provider: Any = None
    active_requests: Callable[[], int] | None = None
    _previous: dict[str, Any] = field(default_factory=dict)

    def _performance(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        performance: dict[str, Any] = {
            "uptime_s": round(time.monotonic() - _STARTED, 3),
            "cpu_time_s": round(usage.ru_utime + usage.ru_stime, 3),
            "threads": threading.active_count(),
        }
        if self.active_requests is not None:
            performance["active_requests"] = self.active_requests()
        return performance

    def report(self, exc: BaseException, crash_type: str) -> None:
        """Emit one `app.crash` record and flush it: the process may be about to exit."""
        try:
            provider = self.logger_provider or get_logger_provider()
            logger = provider.get_logger("otel_bridge.instrumentation.crash")
            logger.emit(
                event_name="app.crash", severity_number=SeverityNumber.FATAL, exception=exc,
                attributes={
                    conv.CRASH_TYPE: crash_type, conv.CRASH_MEMORY: _memory(),
                    conv.CRASH_PERFORMANCE: self._performance(),
                    conv.BREADCRUMBS: [json.dumps(c, default=str) for c in current_breadcrumbs()],
                },
            )  # fmt: skip
            flush = getattr(provider, "force_flush", None)
            if flush is not None:
                flush(FLUSH_TIMEOUT_MS)
        except Exception:  # noqa: BLE001 - never raise from a crash handler
            log.warning("could not report a crash", exc_info=True)

    # --- the hooks ------------------------------------------------------------------------------
    def excepthook(self, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if not issubclass(exc_type, KeyboardInterrupt):
            self.report(exc.with_traceback(tb), "uncaught_exception")
        self._previous.get("sys", sys.__excepthook__)(exc_type, exc, tb)

    def threading_excepthook(self, args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None and not issubclass(args.exc_type, SystemExit):
            self.report(args.exc_value.with_traceback(args.exc_traceback), "thread_exception")
        self._previous.get("threading", threading.__excepthook__)(args)

    def asyncio_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, BaseException):
            self.report(exc, "asyncio_exception")
        previous = self._previous.get(f"asyncio:{id(loop)}")
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    def install(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Replace the hooks (chaining to the current ones); safe to call more than once."""
        if getattr(sys.excepthook, "__self__", None) is not self:
            self._previous["sys"] = sys.excepthook
            sys.excepthook = self.excepthook
        if getattr(threading.excepthook, "__self__", None) is not self:
            self._previous["threading"] = threading.excepthook
            threading.excepthook = self.threading_excepthook
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
        self.install_loop(loop)

    def install_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        handler = loop.get_exception_handler()
        if getattr(handler, "__self__", None) is not self:
            self._previous[f"asyncio:{id(loop)}"] = handler
            loop.set_exception_handler(self.asyncio_handler)

    def uninstall(self) -> None:
        if "sys" in self._previous:
            sys.excepthook = self._previous.pop("sys")
        if "threading" in self._previous:
            threading.excepthook = self._previous.pop("threading")
