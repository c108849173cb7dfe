"""Low-cardinality endpoint paths for SERVER spans (pure).

`http.route` is the template (`/api/users/{id}`) when the framework knows it. Plain ASGI and
many other servers only give the raw path, and storing that would make every user id its own
endpoint, so ids in the path are templated to `:id`.
"""

from __future__ import annotations

import re

_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
_NUMBER = re.compile(r"^[-+]?\d+(?:[.,]\d+)?$")
_HEX = re.compile(r"^(?:0x)?[0-9a-fA-F]{8,}$")
# Long opaque tokens (ULIDs, base64/base62 ids, hashes): letters mixed with digits.
_TOKEN = re.compile(r"^[A-Za-z0-9_\-=]{16,}$")
_DIGIT = re.compile(r"\d")
_EMAIL = re.compile(r"^[^@/]+@[^@/]+\.[^@/]+$")

ID = ":id"


def _is_id(segment: str) -> bool:
    if _NUMBER.match(segment) or _UUID.match(segment) or _EMAIL.match(segment):
        return True
    if _HEX.match(segment) and _DIGIT.search(segment):
        return True
    return bool(_TOKEN.match(segment) and _DIGIT.search(segment) and not segment.isalpha())


def template_path(path: str) -> str:
    """`/api/users/42/audits/8f0c...` -> `/api/users/:id/audits/:id`; query and fragment dropped."""
    path = path.split("?", 1)[0].split("#", 1)[0] or "/"
    if "://" in path:  # a full URL where a path was expected
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    segments = path.split("/")
    return "/".join(ID if segment and _is_id(segment) else segment for segment in segments)


def endpoint_path(route: str | None, path: str | None, span_name: str, method: str) -> str:
    """The endpoint column: the route if known, else the templated path, else whatever of the
    span name is not the method (span names are `{method} {route}` by semconv)."""
    if route:
        return route
    if path:
        return template_path(path)
    rest = span_name[len(method):].strip() if span_name.upper().startswith(method) else span_name
    if rest.startswith("/"):
        return template_path(rest.split(" ", 1)[0])
    return "/"
