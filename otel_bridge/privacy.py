"""Privacy rules applied at ingest (DESIGN §8): keyed IP pseudonyms and secret scrubbing.

IPs are HMAC-SHA256'd with a key kept outside the database: an unkeyed hash of an IPv4
address is reversed by trying all 2^32 addresses in minutes (research/reliability.md §3.6).

Scrubbing follows Sentry Relay's defaults (research/reliability.md §3.4) and is applied to every
stored string that can carry user data: error and crash messages, stack traces, breadcrumbs,
error and action contexts, crash memory/performance maps, captured headers, request/response
bodies, page, referrer, error and resource URLs, device info.

- Keys. The value under a key that contains a word of Relay's password denylist (password,
  passwd, secret, api_key/apikey, auth, credential(s), mysql_pwd, privatekey/private_key, token,
  bearer, plus session, cookie, csrf/xsrf and signature) or is one of Relay's session cookie
  names becomes `[Filtered]`: map keys, header names, and `key=value` / `key: value` /
  `"key": "value"` pairs in free text, URL query strings and fragments included.
  `session.id` is an identifier we keep; `SomeError: ...` is an exception, not a key.
- Values, anywhere in free text, become a typed placeholder, so a reader knows what was there:
  - `[Filtered:card]`: 13-19 digits, spaces or dashes allowed, starting like a card network
    (2-series Mastercard, 3, 4, 5, 6) and passing Luhn (no Luhn, no scrub; Unix timestamps
    start with 1 and are never taken for cards);
  - `[Filtered:iban]`: upper-case IBANs of a known country, of that country's length, spaces
    allowed, passing the mod-97 check;
  - `[Filtered:pem]`: a PEM private key block, BEGIN to END (or to the end of a cut text);
  - `scheme://[Filtered]@host`: URL credentials (the user name can be a token too);
  - `Bearer [Filtered]` / `Basic [Filtered]`: credentials after an auth scheme;
  - `[Filtered:ip]`: IPv4 and IPv6 addresses (DESIGN §8: no raw IP is stored anywhere; only
    the keyed hash columns identify a client). IP-carrying headers (`x-forwarded-for`,
    `x-real-ip`, `forwarded`, ...) lose their whole value. Browsers' reduced versions after a
    product name (`Chrome/126.0.0.0`) are kept, a bare `1.2.3.4` is not.
- SQL statements in contexts (`db.query.text`, `db.statement`) and the `LINE n: <statement>`
  lines of PostgreSQL's error messages are stored normalised, without literals, as in
  `query_patterns`.
- Sizes: strings are capped (MAX_STRING, stack traces MAX_STACK; a secret across the cut never
  survives in part), structures at MAX_DEPTH levels and MAX_ITEMS entries per list or map.

This runs on the ingest hot path: the regexes are compiled once, each rule runs only behind a
cheap substring or count test, and texts are scrubbed line by line with a bounded cache: stack
frames, URLs, header values and messages repeat, so most lines are scrubbed once.
"""


from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from otel_bridge.exporters.sql_normalize import sql_facts
from otel_bridge.secret_keys import (  # noqa: F401 - re-exported: call sites import them from here
    FILTERED,
    FILTERED_CARD,
    FILTERED_IP,
    IP_HEADERS,
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_STACK,
    MAX_STRING,
    SECRET_HEADERS,
    TOO_DEEP,
    TRUNCATED,
    is_secret_key,
)
from otel_bridge.secret_text import (  # noqa: F401 - cap and scrub_text are re-exported
    _SHORT,
    _scrub_capped,
    _scrub_short,
    _scrub_text,
    cap,
    is_card_number,
    scrub_text,
)

# --- structures -----------------------------------------------------------------------------------
SQL_KEYS = frozenset({"db.query.text", "db.statement"})


def scrub(value: Any, depth: int = 0) -> Any:
    """Recursively: values under secret-looking keys become `[Filtered]`, SQL statements are
    normalised, every string gets the free-text rules and a size cap, and deep or long
    structures are cut."""
    cls = value.__class__
    if cls is str:
        if len(value) <= _SHORT:
            return _scrub_short(value)
        if len(value) > MAX_STRING:
            return _scrub_capped(value, MAX_STRING, TRUNCATED)
        return _scrub_text(value)
    if isinstance(value, Mapping):
        if depth >= MAX_DEPTH:
            return TOO_DEEP
        out: dict[str, Any] = {}
        for n, (k, v) in enumerate(value.items()):
            if n == MAX_ITEMS:
                out[TRUNCATED] = f"{len(value) - MAX_ITEMS} more keys"
                break
            key = k if k.__class__ is str else str(k)
            if is_secret_key(key):
                out[scrub_text(key)] = FILTERED
            elif key in SQL_KEYS and v.__class__ is str:
                out[key] = sql_facts(v)[0]
            else:
                out[_scrub_short(key) if len(key) <= _SHORT else _scrub_text(key)] = scrub(v, depth + 1)
        return out
    if isinstance(value, list | tuple):
        if depth >= MAX_DEPTH:
            return TOO_DEEP
        items = [scrub(v, depth + 1) for v in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            items.append(f"{TRUNCATED} {len(value) - MAX_ITEMS} more items")
        return items
    if cls is int and value >= 10**12 and is_card_number(str(value)):
        return FILTERED_CARD
    return value


def header_name(raw: str) -> str:
    """Python instrumentations write `x_forwarded_for`, semconv `x-forwarded-for`: one spelling."""
    return raw.lower().replace("_", "-")


def scrub_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """Captured headers (`http.request.header.<name>` values, lists of strings) -> JSON object
    with one value per header; credentials `[Filtered]`, client IP headers `[Filtered:ip]`,
    the free-text rules on the rest (a `referer` URL can carry a token)."""
    out: dict[str, Any] = {}
    for raw_name, value in headers.items():
        name = header_name(raw_name)
        if name in SECRET_HEADERS or is_secret_key(name):
            out[name] = FILTERED
        elif name in IP_HEADERS:
            out[name] = FILTERED_IP
        else:
            if isinstance(value, list) and len(value) == 1:
                value = value[0]
            out[name] = scrub(value)
    return out


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
