"""Which keys hold secrets (Sentry Relay's denylist), and the placeholders and limits of scrubbing.

Shared by the free-text rules (`secret_text`) and the structure rules (`privacy`).
"""

from __future__ import annotations

from functools import lru_cache

FILTERED = "[Filtered]"
FILTERED_CARD = "[Filtered:card]"
FILTERED_IBAN = "[Filtered:iban]"
FILTERED_PEM = "[Filtered:pem]"
FILTERED_IP = "[Filtered:ip]"
TOO_DEEP = "[Filtered:too deep]"

MAX_STRING = 8 * 1024
MAX_STACK = 64 * 1024
MAX_DEPTH = 12  # levels of maps/lists kept in a context, body or breadcrumb list
MAX_ITEMS = 200  # entries kept per list or map
TRUNCATED = "...[truncated]"

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

# Header names whose values are client IPs: the whole value goes (DESIGN §8, no raw IP stored).
IP_HEADERS = frozenset(
    {
        "x-forwarded-for",
        "x-real-ip",
        "forwarded",
        "x-forwarded",
        "forwarded-for",
        "x-client-ip",
        "x-cluster-client-ip",
        "x-original-forwarded-for",
        "cf-connecting-ip",
        "true-client-ip",
        "fastly-client-ip",
        "x-envoy-external-address",
        "x-appengine-user-ip",
        "client-ip",
    }
)

# Substrings of keys whose values are scrubbed: Relay's PASSWORD_KEY_REGEX (password, secret,
# passwd, api_key, apikey, auth, credentials, mysql_pwd, privatekey, private_key, token), its
# docs' `bearer`, `set-cookie`/cookies and session/CSRF cookie names; `credential` also catches
# AWS's `X-Amz-Credential` and `signature` a pre-signed URL's `X-Amz-Signature`. Compared with
# `-` read as `_`.
SECRET_KEY_PARTS = (
    "password",
    "passwd",
    "secret",
    "api_key",
    "apikey",
    "auth",
    "credential",
    "mysql_pwd",
    "privatekey",
    "private_key",
    "token",
    "bearer",
    "session",
    "cookie",
    "csrf",
    "xsrf",
    "signature",
)

# Relay's session/CSRF cookie names that no part above contains, matched as whole keys.
SECRET_KEYS = frozenset({"sentrysid", "sudo", "su", "symfony", "phpsessid", "sid", "connect.sid"})

# Semconv keys that contain a denylisted word but are identifiers we need, not secrets.
NOT_SECRET = frozenset({"session.id", "session.previous_id"})

_PARTS = tuple(dict.fromkeys(part.replace("-", "_") for part in SECRET_KEY_PARTS))
# What free text must contain (lower-cased) for a `key=value` pair in it to have a secret key.
_TEXT_WORDS = tuple(
    dict.fromkeys(
        [*(p for p in _PARTS if p not in ("password", "passwd", "mysql_pwd")), "passw", "pwd",
         *(p.replace("_", "-") for p in _PARTS if "_" in p and p != "mysql_pwd"),
         "sessid", "sentrysid", "sudo", "symfony", "connect.sid"]
    )
)  # fmt: skip


@lru_cache(maxsize=8192)
def is_secret_key(key: str) -> bool:
    """Cached: the same few attribute and header names come by again and again."""
    lowered = key.lower()
    if lowered in NOT_SECRET:
        return False
    if lowered in SECRET_HEADERS or lowered in SECRET_KEYS:
        return True
    normalized = lowered.replace("-", "_")
    if normalized.startswith("gen_ai.") and normalized.endswith("_tokens"):
        return False  # gen_ai.usage.input_tokens & co. are counts
    return any(part in normalized for part in _PARTS)
