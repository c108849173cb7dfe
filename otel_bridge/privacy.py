"""Privacy rules applied at ingest (DESIGN §8): keyed IP pseudonyms and secret scrubbing.

IPs are HMAC-SHA256'd with a key kept outside the database: an unkeyed hash of an IPv4
address is reversed by trying all 2^32 addresses in minutes (research/reliability.md §3.6).
Secret-looking keys follow Sentry's default denylist; their values become `[Filtered]`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

FILTERED = "[Filtered]"

# Header names whose values are credentials, whatever their spelling.
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
        "x-auth-token",
        "x-access-token",
        "x-csrf-token",
        "x-xsrf-token",
        "x-amz-security-token",
        "x-goog-api-key",
    }
)

# Substrings of keys whose values are scrubbed (Sentry's DEFAULT_DENYLIST, lower-cased).
SECRET_KEY_PARTS = (
    "password",
    "passwd",
    "secret",
    "api_key",
    "apikey",
    "api-key",
    "auth",
    "credentials",
    "mysql_pwd",
    "privatekey",
    "private_key",
    "token",
    "bearer",
    "session",
    "cookie",
    "csrf",
    "xsrf",
)

# Semconv keys that contain a denylisted word but are identifiers we need, not secrets.
NOT_SECRET = frozenset({"session.id", "session.previous_id"})

MAX_STRING = 8 * 1024
MAX_STACK = 64 * 1024


@lru_cache(maxsize=8192)
def is_secret_key(key: str) -> bool:
    """Cached: the same few attribute and header names come by again and again."""
    if key in NOT_SECRET:
        return False
    lowered = key.lower().replace("-", "_")
    if key.lower() in SECRET_HEADERS:
        return True
    return any(part.replace("-", "_") in lowered for part in SECRET_KEY_PARTS)


def scrub(value: Any, depth: int = 0) -> Any:
    """Recursively replace values under secret-looking keys and cap string sizes."""
    if isinstance(value, Mapping):
        return {
            str(k): (FILTERED if is_secret_key(str(k)) else scrub(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [scrub(v, depth + 1) for v in value]
    if isinstance(value, str) and len(value) > MAX_STRING:
        return value[:MAX_STRING] + "...[truncated]"
    return value


def header_name(raw: str) -> str:
    """Python instrumentations write `x_forwarded_for`, semconv `x-forwarded-for`: one spelling."""
    return raw.lower().replace("_", "-")


def scrub_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """Captured headers (`http.request.header.<name>` values, lists of strings) -> JSON object
    with one value per header; credentials filtered."""
    out: dict[str, Any] = {}
    for raw_name, value in headers.items():
        name = header_name(raw_name)
        if name in SECRET_HEADERS or is_secret_key(name):
            out[name] = FILTERED
        elif isinstance(value, list):
            out[name] = value[0] if len(value) == 1 else value
        else:
            out[name] = value
    return out


def cap(text: str | None, limit: int = MAX_STACK) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + "\n...[truncated]"


class IpHasher:
    """Keyed pseudonyms for client IPs; the same IP and key always give the same digest."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the IP hash key must be at least 16 bytes")
        self._key = key
        self._cache: dict[str, str] = {}

    def __call__(self, ip: str | None) -> str | None:
        if not ip:
            return None
        digest = self._cache.get(ip)
        if digest is None:
            if len(self._cache) > 100_000:  # bounded: IPs repeat, but not forever
                self._cache.clear()
            digest = hmac.new(self._key, ip.strip().encode(), hashlib.sha256).hexdigest()[:32]
            self._cache[ip] = digest
        return digest

    def subject(self, kind: str, value: str) -> str:
        """The keyed hash `erased_subjects` keeps for a forgotten user or session: a dump of the
        database does not tell whether a given user was erased."""
        return hmac.new(self._key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()

    @classmethod
    def from_setting(cls, configured: str | None, data_dir: Path) -> IpHasher:
        """The key from OTEL_BRIDGE_IP_HASH_KEY, else one generated once and kept in the data
        directory (never in the database, so a database dump alone cannot reverse the IPs)."""
        if configured:
            return cls(configured.encode())
        path = data_dir / "ip-hash.key"
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        return cls(path.read_text().strip().encode())
