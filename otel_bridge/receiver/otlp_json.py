"""OTLP/JSON request bodies -> the same protobuf messages as OTLP/protobuf (browsers send JSON).

`google.protobuf.json_format` does most of it, with two OTLP rules it does not know: trace and
span ids are hex, not base64 (json_format would silently base64-decode `"5B8E…"` into a 24-byte
id, research/semconv.md §7.6), and unknown fields must be ignored.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from google.protobuf import json_format

from otel_bridge.errors import PermanentError
from otel_bridge.pipeline import REQUEST_TYPES

_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId"})


def _hex_ids_to_base64(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                try:
                    node[key] = base64.b64encode(bytes.fromhex(value)).decode("ascii")
                except ValueError:
                    raise PermanentError(f"{key} is not hex: {value[:40]!r}") from None
            else:
                _hex_ids_to_base64(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids_to_base64(item)


def parse_json(signal: str, data: bytes) -> Any:
    """An Export*ServiceRequest from its OTLP/JSON encoding; bad input is a PermanentError."""
    request_type = REQUEST_TYPES[signal]
    try:
        document = json.loads(data)
        if not isinstance(document, dict):
            raise PermanentError("an OTLP/JSON body must be a JSON object")
        _hex_ids_to_base64(document)
        return json_format.ParseDict(document, request_type(), ignore_unknown_fields=True)
    except (ValueError, json_format.ParseError, RecursionError, TypeError) as exc:
        raise PermanentError(f"cannot decode {request_type.__name__} from JSON: {str(exc)[:200]}") from None
