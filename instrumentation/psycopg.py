"""psycopg 3: DB CLIENT spans that fill `database_performance_metrics` completely.

`opentelemetry-instrumentation-psycopg` makes the spans (stable DB semconv when
`OTEL_SEMCONV_STABILITY_OPT_IN` includes `database`, which `configure()` defaults). It does not
record how many rows a statement returned, how big the connection pool was, or a breadcrumb per
query, so each connection gets two cursor layers around the instrumentation's traced cursor:

- inside the DB span (a base cursor the traced cursor derives from): `db.response.returned_rows`
  and `otel_bridge.db.connection_pool.size` once the statement ran;
- around the DB span (a subclass of the traced cursor): a `query` breadcrumb on the caller's span
  and trail, so an error in the request handler carries the queries that preceded it.

Pools made by `psycopg_pool` are also reported as the `db.client.connection.count` metric
(`db.client.connection.state` = idle|used). Nothing here ever raises into the app.
"""

from __future__ import annotations

import logging
import re
import time
import weakref
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind

from otel_bridge import conventions as conv
from otel_bridge.instrumentation.breadcrumbs import breadcrumb

log = logging.getLogger(__name__)

RETURNED_ROWS = "db.response.returned_rows"
BREADCRUMB_MAX_CHARS = 300
_SPACES = re.compile(r"\s+")
_pools: weakref.WeakSet[Any] = weakref.WeakSet()


def _annotate_db_span(cursor: Any) -> None:
    """Runs inside the instrumentation's span, right after the statement (failed or not): the span is ours to
    annotate only if it is the DB CLIENT span (a suppressed instrumentation leaves the caller's
    span current, which must not get these attributes)."""
    try:
        span = trace.get_current_span()
        if not span.is_recording() or getattr(span, "kind", None) is not SpanKind.CLIENT:
            return
        rowcount = cursor.rowcount  # -1 when the statement failed or returns no count
        if isinstance(rowcount, int) and rowcount >= 0:
            span.set_attribute(RETURNED_ROWS, rowcount)
        pool = getattr(cursor.connection, "_pool", None)
        if pool is not None:
            span.set_attribute(conv.DB_CONNECTION_POOL_SIZE, int(pool.get_stats()["pool_size"]))
    except Exception:  # noqa: BLE001 - instrumentation must never break a query
        log.debug("could not annotate the DB span", exc_info=True)


def _statement_text(cursor: Any, query: Any) -> str:
    if isinstance(query, bytes):
        text = query.decode("utf-8", "replace")
    elif isinstance(query, str):
        text = query
    else:  # psycopg.sql.Composable
        text = query.as_string(cursor)
    text = _SPACES.sub(" ", text).strip()
    return text if len(text) <= BREADCRUMB_MAX_CHARS else text[: BREADCRUMB_MAX_CHARS - 1] + "…"


def _query_breadcrumb(cursor: Any, query: Any, started: float, error: BaseException | None) -> None:
    try:
        data: dict[str, Any] = {"duration_ms": round((time.perf_counter() - started) * 1000, 2)}
        if error is None and isinstance(cursor.rowcount, int) and cursor.rowcount >= 0:
            data["rows"] = cursor.rowcount
        if error is not None:
            data["error"] = type(error).__name__
        breadcrumb(_statement_text(cursor, query), category="query", level="error" if error else "info", data=data)
    except Exception:  # noqa: BLE001
        log.debug("query breadcrumb dropped", exc_info=True)


@cache
def _inner_cursor(base: type) -> type:
    """The cursor the instrumentation's traced cursor derives from: its `execute` runs inside
    the DB span."""
    import psycopg

    if issubclass(base, psycopg.AsyncCursor):

        class AsyncReturnedRowsCursor(base):  # type: ignore[misc, valid-type]
            async def execute(self, *args: Any, **kwargs: Any) -> Any:
                try:
                    return await super().execute(*args, **kwargs)
                finally:
                    _annotate_db_span(self)

            async def executemany(self, *args: Any, **kwargs: Any) -> Any:
                try:
                    return await super().executemany(*args, **kwargs)
                finally:
                    _annotate_db_span(self)

        return AsyncReturnedRowsCursor

    class ReturnedRowsCursor(base):  # type: ignore[misc, valid-type]
        def execute(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().execute(*args, **kwargs)
            finally:
                _annotate_db_span(self)

        def executemany(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().executemany(*args, **kwargs)
            finally:
                _annotate_db_span(self)

    return ReturnedRowsCursor


@cache
def _outer_cursor(traced: type) -> type:
    """A subclass of the instrumentation's traced cursor: its `execute` runs around the DB span,
    where the current span is the caller's."""
    import psycopg

    if issubclass(traced, psycopg.AsyncCursor):

        class AsyncBreadcrumbCursor(traced):  # type: ignore[misc, valid-type]
            async def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
                started, error = time.perf_counter(), None
                try:
                    return await super().execute(query, *args, **kwargs)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    _query_breadcrumb(self, query, started, error)

        return AsyncBreadcrumbCursor

    class BreadcrumbCursor(traced):  # type: ignore[misc, valid-type]
        def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
            started, error = time.perf_counter(), None
            try:
                return super().execute(query, *args, **kwargs)
            except BaseException as exc:
                error = exc
                raise
            finally:
                _query_breadcrumb(self, query, started, error)

    return BreadcrumbCursor


def _default_cursor(is_async: bool) -> type:
    import psycopg

    return psycopg.AsyncCursor if is_async else psycopg.Cursor


def _prepare(kwargs: dict[str, Any], is_async: bool) -> None:
    kwargs["cursor_factory"] = _inner_cursor(kwargs.get("cursor_factory") or _default_cursor(is_async))


def _finish(connection: Any) -> Any:
    try:
        connection.cursor_factory = _outer_cursor(connection.cursor_factory)
    except Exception:  # noqa: BLE001
        log.debug("could not add query breadcrumbs to %r", connection, exc_info=True)
    return connection


def _connect(wrapped: Callable[..., Any], _instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    _prepare(kwargs, is_async=False)
    return _finish(wrapped(*args, **kwargs))


def _connect_async(wrapped: Callable[..., Any], _instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    _prepare(kwargs, is_async=True)

    async def connect() -> Any:
        return _finish(await wrapped(*args, **kwargs))

    return connect()


def _track_pool(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    result = wrapped(*args, **kwargs)
    _pools.add(instance)
    return result


def _observe_pools(_: CallbackOptions) -> Iterable[Observation]:
    for pool in list(_pools):
        try:
            stats = pool.get_stats()
        except Exception:  # noqa: BLE001
            continue
        idle = int(stats.get("pool_available", 0))
        used = max(int(stats.get("pool_size", 0)) - idle, 0)
        name = str(pool.name)
        yield Observation(idle, {"db.client.connection.state": "idle", "db.client.connection.pool.name": name})
        yield Observation(used, {"db.client.connection.state": "used", "db.client.connection.pool.name": name})


_instrumented = False


def instrument_psycopg(tracer_provider: Any = None, meter_provider: Any = None) -> bool:
    """Instrument psycopg 3 (and psycopg_pool's pools, if installed) for connections made from
    now on; False if psycopg or its instrumentation is not installed. Safe to call twice."""
    global _instrumented
    try:
        import psycopg
        import wrapt
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    except ImportError:
        return False
    if _instrumented:
        return True
    instrumentor = PsycopgInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=tracer_provider, skip_dep_check=True)
    # Ours wrap the instrumentation's wrappers, so our base cursor reaches its traced cursor.
    wrapt.wrap_function_wrapper(psycopg, "connect", _connect)
    wrapt.wrap_function_wrapper(psycopg.Connection, "connect", _connect)
    wrapt.wrap_function_wrapper(psycopg.AsyncConnection, "connect", _connect_async)
    try:
        import psycopg_pool.base

        wrapt.wrap_function_wrapper(psycopg_pool.base.BasePool, "__init__", _track_pool)
        if meter_provider is not None:
            meter = meter_provider.get_meter("otel_bridge.instrumentation.psycopg")
            meter.create_observable_up_down_counter(
                "db.client.connection.count", callbacks=[_observe_pools], unit="{connection}",
                description="Connections of each psycopg_pool pool, by state.",
            )  # fmt: skip
    except ImportError:
        pass
    _instrumented = True
    return True
