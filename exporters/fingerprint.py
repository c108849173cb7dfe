"""Error fingerprints: which errors are the same bug (pure; DESIGN §7, like Sentry's grouping).

In order of preference:
1. a custom `otel_bridge.fingerprint` sent with the error;
2. the exception type plus the in-app frames of its stack trace: file and function, never line
   numbers; library frames (site-packages, node_modules, CDN bundles, vendor chunks) left out;
   Python tracebacks, V8 (`at f (url:1:2)`) and Firefox/Safari (`f@url:1:2`) stacks are parsed;
3. the exception type plus the message with its variable parts (numbers, UUIDs, hex, IPs, emails,
   quoted values, timestamps) replaced by placeholders.

Types group without their module (`psycopg.errors.UniqueViolation` is `UniqueViolation`). Python
uses the final exception of a chain and its own traceback. JavaScript frames are keyed by file
(without host, query, content hash or `.min`) and the normalised message, not by function: the
same bug reported from a minified build (mangled names) and a dev build must group, and browser
function names are unreliable anyway (anonymous callbacks, bundler wrappers).
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from urllib.parse import urlsplit

MAX_FRAMES = 8  # the innermost in-app frames that identify a bug; deeper callers vary by route

_PY_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line \d+, in (?P<func>\S+)', re.M)
_PY_CHAIN = re.compile(r"^(?:During handling of the above exception|The above exception was the direct cause)", re.M)
_V8_FRAME = re.compile(r"^\s*at (?:(?P<func>.+?) \()?(?P<loc>[^()\s]+?)(?::\d+){1,2}\)?\s*$", re.M)
_FF_FRAME = re.compile(r"^(?P<func>[^@\s]*)@(?P<loc>\S+?)(?::\d+){1,2}\s*$", re.M)

_PY_LIBRARY = ("site-packages/", "dist-packages/", "/lib/python3", "<frozen ", "<string>", "/usr/lib/python")
_JS_LIBRARY = re.compile(
    r"node_modules/|^node:|^internal/|/vendors?[.~/-]|chunk-vendors|/polyfills?[.-]|/runtime[.~-]"
    r"|^https?://(?:unpkg\.com|cdn\.jsdelivr\.net|cdnjs\.cloudflare\.com|ajax\.googleapis\.com|"
    r"code\.jquery\.com|cdn\.)"
    r"|^(?:<anonymous>|native|\[native code\]|eval|webpack/bootstrap)",
    re.I,
)
_BUNDLE_HASH = re.compile(r"[.~-][0-9a-f]{6,}(?=\.)|\.min(?=\.)", re.I)

# Message placeholders, most specific first.
_MESSAGE_RULES = [
    (re.compile(r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"), "<ts>"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I), "<uuid>"),
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "<email>"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"), "<ip>"),
    (re.compile(r"\b(?:[0-9a-f]{1,4}:){3,7}[0-9a-f]{1,4}\b", re.I), "<ip>"),
    (re.compile(r"\b0x[0-9a-f]+\b", re.I), "<hex>"),
    (re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b", re.I), "<hex>"),
    (re.compile(r"'[^'\n]*'|\"[^\"\n]*\"|`[^`\n]*`"), "<str>"),
    (re.compile(r"\(([^()\n]*)\)=\(([^()\n]*)\)"), "(<key>)=(<value>)"),  # PostgreSQL's Key (a)=(1)
    (re.compile(r"(?<![A-Za-z_])[-+]?\d+(?:\.\d+)?(?![A-Za-z_])"), "<n>"),
]


def normalize_type(exception_type: str | None) -> str:
    """`psycopg.errors.UniqueViolation` and `UniqueViolation` are one type."""
    if not exception_type:
        return ""
    return exception_type.strip().rsplit(".", 1)[-1].rsplit(":", 1)[-1]


# The property a JavaScript TypeError names is the bug, not a value (and it survives
# minification): Chrome `(reading 'id')`, Firefox `can't access property "id"`, Safari `evaluating 'row.id'`.
_PROPERTY = re.compile(r"""\(reading '([\w$]+)'\)|access property "([\w$]+)"|evaluating '([\w$.]+)'""")
# Comprehension frames come and go with the Python version (3.12 inlines them, PEP 709).
_PY_INLINED = frozenset({"<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>"})


def normalize_message(message: str | None) -> str:
    text = (message or "").strip().splitlines()[0] if (message or "").strip() else ""
    text = _PROPERTY.sub(lambda m: f"<prop {m.group(1) or m.group(2) or m.group(3)}>", text)
    for pattern, placeholder in _MESSAGE_RULES:
        text = pattern.sub(placeholder, text)
    return re.sub(r"\s+", " ", text)[:300]


def _python_frames(stack: str) -> list[str]:
    # A chain prints the causes first: the final exception's traceback is the last one.
    final = _PY_CHAIN.split(stack)[-1]
    frames = []
    for match in _PY_FRAME.finditer(final):
        path = match["file"].replace("\\", "/")
        if any(marker in path for marker in _PY_LIBRARY) or match["func"] in _PY_INLINED:
            continue
        # The last two path parts: deploy roots differ between hosts and releases.
        frames.append("/".join(path.rsplit("/", 2)[-2:]) + ":" + match["func"])
    return frames[-MAX_FRAMES:]


def _js_file(location: str) -> str | None:
    if _JS_LIBRARY.search(location):
        return None
    parts = urlsplit(location)
    path = parts.path if parts.scheme in ("http", "https", "file", "webpack") else location
    if not path or _JS_LIBRARY.search(path):
        return None
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return _BUNDLE_HASH.sub("", name) or None


def _js_frames(stack: str) -> list[str]:
    files: list[str] = []
    for match in [*_V8_FRAME.finditer(stack), *_FF_FRAME.finditer(stack)]:
        name = _js_file(match["loc"])
        if name and name not in files:
            files.append(name)
    return files[:MAX_FRAMES]


@lru_cache(maxsize=4096)
def in_app_frames(stack: str | None) -> tuple[str, tuple[str, ...]]:
    """("python" | "javascript" | "", the in-app frame keys, innermost last for Python).
    Cached: an error storm repeats one stack text thousands of times, and parsing it is most of
    an error row's cost."""
    if not stack:
        return "", ()
    if _PY_FRAME.search(stack):
        return "python", tuple(_python_frames(stack))
    if _V8_FRAME.search(stack) or _FF_FRAME.search(stack):
        return "javascript", tuple(_js_frames(stack))
    return "", ()


def custom_value(value: object) -> str | None:
    """An `otel_bridge.fingerprint` attribute: a string, or a list of parts (Sentry's style)."""
    if isinstance(value, list | tuple):
        return "\x1f".join(str(v) for v in value) or None
    return str(value) if value not in (None, "") else None


def fingerprint(exception_type: str | None, message: str | None, stacktrace: str | None,
                custom: str | None = None) -> str:  # fmt: skip
    """A short hex id: equal for errors that are the same bug."""
    if custom:
        basis = "custom\x1f" + custom.strip()
    else:
        kind = normalize_type(exception_type)
        language, frames = in_app_frames(stacktrace)
        if language == "python" and frames:
            basis = "\x1f".join(["py", kind, *frames])
        elif language == "javascript" and frames:
            basis = "\x1f".join(["js", kind, normalize_message(message), *frames])
        else:
            basis = "\x1f".join(["msg", kind, normalize_message(message)])
    return hashlib.blake2b(basis.encode(), digest_size=8).hexdigest()


def title(exception_type: str | None, message: str | None) -> str:
    """What a group is called: `Type: first line of the message`."""
    kind = (exception_type or "").strip()
    first = (message or "").strip().splitlines()[0] if (message or "").strip() else ""
    text = f"{kind}: {first}" if kind and first else kind or first or "error"
    return text[:200]
