"""Bearer-token authentication shared by the gRPC and HTTP receivers (`OTEL_BRIDGE_AUTH_TOKENS`).

Tokens are compared in constant time, every configured token is tried (so timing does not tell
which one almost matched), and no token, offered or configured, is ever logged or echoed.
"""

from __future__ import annotations

import hmac

UNAUTHENTICATED_MESSAGE = "missing or invalid bearer token"


class BearerTokens:
    def __init__(self, configured: str | None) -> None:
        self._tokens = [t.strip().encode() for t in (configured or "").split(",") if t.strip()]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def allows(self, authorization: str | None) -> bool:
        """True when auth is off, or the `authorization` value is `Bearer <a configured token>`."""
        if not self._tokens:
            return True
        scheme, _, offered = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not offered:
            return False
        candidate = offered.strip().encode()
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(candidate, token)
        return matched
