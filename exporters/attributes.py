"""OTLP `AnyValue`/`KeyValue` decoding and old/new semconv name coalescing (pure).

Decoding is the receiver's hottest loop (about two thirds of per-span CPU is turning
`AnyValue`s into Python values, see research/ceilings.md B), so `decode_value` dispatches on
`WhichOneof` once and recursion is kept to arrays and maps.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from typing import Any

# protobuf's own recursion limit stops gRPC payloads at depth ~50; JSON input could go deeper.
MAX_DEPTH = 64

Attributes = dict[str, Any]


def clean(text: str) -> str:
    """PostgreSQL text and jsonb refuse NUL characters; one in an attribute must not fail the
    whole Export's transaction."""
    return text.replace("\x00", "") if "\x00" in text else text


def decode_value(value: Any, depth: int = 0) -> Any:
    """One `AnyValue` -> str | bool | int | float | bytes-as-base64 | list | dict | None."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return clean(value.string_value)
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bool_value":
        return value.bool_value
    if kind is None:
        return None
    if depth >= MAX_DEPTH:
        return "[too deep]"
    if kind == "array_value":
        return [decode_value(v, depth + 1) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {clean(kv.key): decode_value(kv.value, depth + 1) for kv in value.kvlist_value.values}
    # bytes_value: JSON-safe form, as OTLP/JSON itself encodes bytes.
    return base64.b64encode(value.bytes_value).decode("ascii")


def decode_attributes(key_values: Iterable[Any], wanted: frozenset[str] | None = None) -> Attributes:
    """Repeated `KeyValue` -> dict (a repeated key keeps its last value, as the SDKs do).

    With `wanted`, only those keys: spans that yield no row are read for identity alone, and
    row spans for their columns alone, without paying for every value's decoding."""
    out: Attributes = {}
    for kv in key_values:
        key = kv.key
        if wanted is not None:
            if key not in wanted:  # wanted names have no NUL
                continue
        elif "\x00" in key:
            key = clean(key)
        value = kv.value
        # Inline fast path: most attribute values are non-empty strings, and reading one is
        # cheaper than asking which field is set.
        text = value.string_value
        if text:
            out[key] = text if "\x00" not in text else clean(text)
        else:
            out[key] = decode_value(value)
    return out


def first(attrs: Mapping[str, Any], *names: str) -> Any:
    """The value of the first name present and not empty: the stable name comes first, then the
    old one (Python instrumentations still emit the old names by default)."""
    for name in names:
        value = attrs.get(name)
        if value is None or value == "" or (value.__class__ is list and not value):
            continue
        return value
    return None


def as_str(value: Any) -> str | None:
    if value.__class__ is str:  # the common case first: this runs several times per span
        return value  # type: ignore[no-any-return]
    if value is None:
        return None
    if isinstance(value, list):
        return as_str(value[0]) if value else None
    return str(value)


def as_int(value: Any) -> int | None:
    """Ints, floats and numeric strings (browsers send numbers as strings; captured headers are
    lists of strings) -> int."""
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        return None


def as_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def prefixed(attrs: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Attributes under `prefix`, with the prefix removed (e.g. captured HTTP headers)."""
    n = len(prefix)
    return {k[n:]: v for k, v in attrs.items() if k.startswith(prefix)}
