"""Exception span events -> failures, one per real failure -> `error_logs` rows (pure).

Frameworks record one failure several times: on the handler span and again on the SERVER span
(DESIGN §5 rule 2). Python's traceback grows as the exception propagates, so the recorded stacks
differ in their outer frames but share the innermost one (where it was raised); events of one
trace with the same type, message and innermost frame are one occurrence.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from otel_bridge import conventions as conv
from otel_bridge.exporters import fingerprint as fp
from otel_bridge.exporters import sql_normalize as sqln
from otel_bridge.exporters.attributes import Attributes, as_str, decode_attributes, first
from otel_bridge.exporters.context import Identity, ResourceContext, user_agent
from otel_bridge.exporters.rows import ErrorRow, row_id, timestamp
from otel_bridge.privacy import cap, scrub, scrub_text

# Which category wins when one failure is seen on several spans: the most specific one.
CATEGORY_PRIORITY = {"Database": 3, "API": 2, "JavaScript": 1, "Application": 0}

_PY_FRAME = re.compile(r'^\s*File "[^"]*", line \d+, in .*$', re.M)
_JS_FRAME = re.compile(r"^\s*at .+$|^[^@\s]*@.+:\d+(?::\d+)?$", re.M)


class SpanLike(Protocol):
    """What failure extraction needs to know about a mapped span."""

    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    category: str
    events: Sequence[Any]
    attrs: Attributes
    pb: Any
    res: ResourceContext

    def all_attrs(self) -> Attributes: ...

    @property
    def trace_hex(self) -> str: ...

    @property
    def span_hex(self) -> str: ...


def innermost_frame(stack: str | None) -> str:
    """The frame where the exception was raised: last Python frame, first JS frame."""
    if not stack:
        return ""
    python_frames = _PY_FRAME.findall(stack)
    if python_frames:
        return python_frames[-1].strip()
    js = _JS_FRAME.search(stack)
    return js.group(0).strip() if js else ""


def occurrence_key(exc_type: str | None, message: str, stack: str | None) -> str:
    """Same failure, same key, wherever it was recorded (span event or log record)."""
    frame = innermost_frame(stack)
    return hashlib.blake2b(f"{exc_type}\x1f{message}\x1f{frame}".encode(), digest_size=8).hexdigest()


def parse_breadcrumbs(value: Any) -> list[Any] | None:
    """An explicit `otel_bridge.breadcrumbs` value: an array of maps, that array as JSON, or an
    array of JSON strings (SDKs whose attributes cannot hold maps)."""
    if isinstance(value, str):
        value = _json_or_text(value)
    if not value:
        return None
    items = value if isinstance(value, list) else [value]
    return scrub([_json_or_text(item) if isinstance(item, str) else item for item in items])


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def is_exception_event(name: str) -> bool:
    return name == "exception" or name.endswith(".exception")


@dataclass
class Failure:
    exc_type: str | None
    message: str
    stack: str | None
    span: SpanLike
    event_index: int
    time_unix_nano: int
    category: str
    event_attrs: Attributes
    spans: list[SpanLike] = field(default_factory=list)
    occurrence_key: str = ""  # same failure, same key: also across Export requests

    def fingerprint(self) -> str:
        custom = self.event_attrs.get(conv.FINGERPRINT) or self.span.attrs.get(conv.FINGERPRINT)
        return fp.fingerprint(self.exc_type, self.message, self.stack, fp.custom_value(custom))

    def absorb(self, other: Failure) -> None:
        """Merge a repeat of this failure seen on other spans."""
        self.spans.extend(other.spans)
        if CATEGORY_PRIORITY[other.category] > CATEGORY_PRIORITY[self.category]:
            self.span, self.event_index, self.category = other.span, other.event_index, other.category
            self.time_unix_nano = other.time_unix_nano
        if other.stack and len(other.stack) > len(self.stack or ""):
            self.stack = other.stack
        for key, value in other.event_attrs.items():
            self.event_attrs.setdefault(key, value)


def collect_failures(spans: Iterable[SpanLike]) -> list[Failure]:
    """Every distinct failure in the request, in the order first seen."""
    spans = list(spans)
    by_key: dict[tuple[bytes, str], Failure] = {}
    for span in spans:
        for index, event in enumerate(span.events):
            if not is_exception_event(event.name):
                continue
            attrs = decode_attributes(event.attributes)
            exc_type = as_str(attrs.pop("exception.type", None))
            message = as_str(attrs.pop("exception.message", None)) or ""
            stack = as_str(attrs.pop("exception.stacktrace", None))
            attrs.pop("exception.escaped", None)
            failure = Failure(
                exc_type=exc_type,
                message=message,
                stack=stack,
                span=span,
                event_index=index,
                time_unix_nano=event.time_unix_nano or span.events[0].time_unix_nano,
                category=span.category,
                event_attrs=attrs,
                spans=[span],
            )
            failure.occurrence_key = occurrence_key(exc_type, message, stack)
            key = (span.trace_id, failure.occurrence_key)
            if key in by_key:
                by_key[key].absorb(failure)
            else:
                by_key[key] = failure
    return _merge_propagated(list(by_key.values()), {(span.trace_id, span.span_id): span for span in spans})


def _merge_propagated(failures: list[Failure], spans_by_id: dict[tuple[bytes, bytes], SpanLike]) -> list[Failure]:
    """Some libraries re-raise with a fresh traceback (psycopg's `raise ex.with_traceback(None)`),
    so the copy recorded by an ancestor span has another innermost frame: the same type and
    message recorded on a span and on one of its ancestors is still one failure."""
    kept: list[Failure] = []
    alike: dict[tuple[bytes, str | None, str], list[Failure]] = {}
    for failure in failures:
        same = alike.setdefault((failure.span.trace_id, failure.exc_type, failure.message), [])
        for earlier in same:
            if _is_ancestor(earlier.span, failure.span, spans_by_id) or _is_ancestor(failure.span, earlier.span, spans_by_id):
                earlier.absorb(failure)
                break
        else:
            same.append(failure)
            kept.append(failure)
    return kept


def _is_ancestor(ancestor: SpanLike, span: SpanLike | None, spans_by_id: dict[tuple[bytes, bytes], SpanLike]) -> bool:
    seen: set[bytes] = set()
    while span is not None and span.span_id not in seen:
        if span.span_id == ancestor.span_id:
            return True
        seen.add(span.span_id)
        span = spans_by_id.get((span.trace_id, span.parent_span_id))
    return False


def breadcrumb_from_event(event: Any) -> dict[str, Any]:
    attrs = decode_attributes(event.attributes)
    data = attrs.get(conv.BREADCRUMB_DATA)
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            pass
    crumb: dict[str, Any] = {
        "timestamp": event.time_unix_nano / 1e9,
        "category": as_str(attrs.get(conv.BREADCRUMB_CATEGORY)) or "default",
        "message": as_str(attrs.get(conv.BREADCRUMB_MESSAGE)) or "",
        "level": as_str(attrs.get(conv.BREADCRUMB_LEVEL)) or "info",
    }
    if data is not None:
        crumb["data"] = data
    return crumb


def breadcrumbs_for(
    failure: Failure, spans_by_id: dict[tuple[bytes, bytes], SpanLike]
) -> list[Any] | None:
    """DESIGN §7 order: the error's own `otel_bridge.breadcrumbs`, else the breadcrumb events on
    the spans it was recorded on and their ancestors in the same request, oldest first. (The session-history fallback
    needs the database and is applied by the writer's caller, not here.)"""
    own = parse_breadcrumbs(failure.event_attrs.get(conv.BREADCRUMBS) or failure.span.attrs.get(conv.BREADCRUMBS))
    if own:
        return own
    crumbs: list[tuple[int, dict[str, Any]]] = []
    seen: set[bytes] = set()
    # Every span the failure was recorded on (handler and SERVER span), and their ancestors.
    for start in failure.spans:
        span: SpanLike | None = start
        while span is not None and span.span_id not in seen:
            seen.add(span.span_id)
            for event in span.events:
                if event.name == conv.BREADCRUMB_EVENT:
                    crumbs.append((event.time_unix_nano, breadcrumb_from_event(event)))
            span = spans_by_id.get((span.trace_id, span.parent_span_id))
    crumbs.sort(key=lambda pair: pair[0])
    return scrub([crumb for _, crumb in crumbs]) or None


# Attributes already stored in their own columns; everything else goes to the error's context.
_CONTEXT_SKIP_PREFIXES = ("http.request.header.", "http.response.header.", "exception.")
_CONTEXT_SKIP = frozenset(
    {"user.id", "enduser.id", "user.roles", "enduser.role", "session.id", "client.address",
     "http.client_ip", "net.peer.ip", "user_agent.original", "http.user_agent",
     "otel_bridge.page_view.id", "otel_bridge.breadcrumbs", "otel_bridge.page.slug",
     "url.full", "http.url"}
)  # fmt: skip


def error_row(
    failure: Failure,
    ident: Identity,
    spans_by_id: dict[tuple[bytes, bytes], SpanLike],
    server: SpanLike | None,
) -> ErrorRow:
    """One error_logs row; the request's SERVER span fills in URL and user agent when the
    failing span (a DB call, a handler) has none."""
    span = failure.span
    attrs, res = span.all_attrs(), span.res
    request_attrs = server.all_attrs() if server is not None else {}
    context: dict[str, Any] = {
        k: v
        for k, v in attrs.items()
        if k not in _CONTEXT_SKIP and not k.startswith(_CONTEXT_SKIP_PREFIXES)
    }
    context.update(failure.event_attrs)
    context.pop("otel_bridge.breadcrumbs", None)
    context["span.name"] = span.pb.name
    error_code = None
    if failure.category == "Database":
        error_code = as_str(first(attrs, "db.response.status_code"))
        statement = as_str(first(attrs, "db.query.text", "db.statement"))
        if statement:
            context["query"] = sqln.sql_facts(statement)[0]
            context.pop("db.query.text", None)
            context.pop("db.statement", None)
    error_id = row_id(failure.time_unix_nano, span.trace_id, span.span_id, b"error",
                      str(failure.event_index).encode())  # fmt: skip
    return ErrorRow(
        error_id, error_id, failure.category,
        scrub_text(failure.message) or failure.exc_type or "exception", cap(failure.stack), error_code,
        failure.exc_type, timestamp(failure.time_unix_nano), ident.user_id, ident.user_role,
        ident.session_id, as_str(first(attrs, "otel_bridge.page.slug")),
        scrub_text(as_str(first(attrs, "url.full", "http.url") or first(request_attrs, "url.full", "http.url"))),
        user_agent(attrs) or user_agent(request_attrs) or user_agent(res.attrs),
        res.device_info, breadcrumbs_for(failure, spans_by_id), scrub(context),
        res.service_name, res.service_version, res.environment, span.trace_hex, span.span_hex,
        ident.page_view_id, failure.fingerprint(), failure.occurrence_key,
    )  # fmt: skip
