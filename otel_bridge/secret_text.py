"""Secrets in free text: cards (Luhn), IBANs (mod 97), PEM keys, URL credentials, auth schemes,
secret `key=value` pairs, IP addresses and SQL literals, found and replaced by placeholders, fast.

The rules and placeholders are described in `otel_bridge.privacy`; this module is the hot part.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import Any

from otel_bridge.exporters.sql_normalize import normalize_sql
from otel_bridge.secret_keys import (
    _TEXT_WORDS,
    FILTERED,
    FILTERED_CARD,
    FILTERED_IBAN,
    FILTERED_IP,
    FILTERED_PEM,
    MAX_STACK,
    TRUNCATED,
    is_secret_key,
)

# --- free text ------------------------------------------------------------------------------------
# Each pattern starts with a character class, never a look-behind, so that the regex engine skips
# to candidate positions in C; word-boundary look-behinds come after the first character.

_PEM = re.compile(
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----.*?(?:-----END[A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----|\Z)",
    re.S,
)
# scheme://userinfo@ (userinfo up to the last @ before the path: passwords with a raw @ exist).
_URL_AUTH = re.compile(
    r"([A-Za-z](?<![A-Za-z0-9+.\-][A-Za-z])[A-Za-z0-9+.\-]*+://)[^\s/?#@]*+(?:@[^\s/?#@]*+)*@"
)
# `key=value`, `key: value`, `"key": "value"`; the value is matched in a look-ahead, so that pairs
# inside a value that is kept (`next=/cb?token=x`) are seen too.
_PAIR = re.compile(
    r"""([A-Za-z_](?<![\w.\-][A-Za-z_])[\w.\-]*+)(["']?[ \t]*[:=][ \t]*)"""
    r"""(?=("(?:[^"\\\n]|\\.)*"|'[^'\n]*'|(?:(?i:bearer|basic|token|digest|negotiate)[ \t]+)?[^\s&,;"'<>(){}\[\]|]+))"""
)
_AUTH_SCHEME = re.compile(r"(b(?<!\wb)(?:earer|asic))([ \t]+)([A-Za-z0-9\-._~+/]+=*)", re.I)
# Cards, IBANs and IPv4 addresses in one scan that stops only at digits (the regex engine skips
# other characters in C; each scan costs about 10 ns a character, so their number matters).
# The look-aheads only find candidates, checked in Python: a digit that starts no card, IBAN or
# address consumes nothing more, so one starting inside a failed candidate is still tried
# (`ref 22 4111 1111 1111 1111`).
_IBAN_OR_CARD = (
    r"(?<=[A-Z][A-Z][0-9])(?<![A-Za-z0-9][A-Z][A-Z][0-9])(?=(?P<iban>[0-9](?: ?[A-Z0-9]){11,30}))"
    r"|(?<=[2-6])(?<![A-Za-z0-9][2-6])(?=(?P<card>(?:[ \-]?[0-9]){12,18})(?![A-Za-z0-9]))"
)
_IPV4 = r"(?<![\w.][0-9])(?=(?P<ip>[0-9]{0,2}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})(?!\w)(?!\.[0-9]))"
_DIGITS = re.compile(rf"[0-9](?:{_IBAN_OR_CARD}|{_IPV4})", re.A)
_DIGITS_IP = re.compile(rf"[0-9]{_IPV4}", re.A)
# A candidate glued to the end of a secret just replaced (the look-behinds above refuse it).
_GLUED = re.compile(
    r"(?=(?P<iban>[A-Z][A-Z][0-9][0-9](?: ?[A-Z0-9]){11,30}))"
    r"|(?=(?P<card>[2-6](?:[ \-]?[0-9]){12,18})(?![A-Za-z0-9]))"
    r"|(?=(?P<ip>[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})(?!\w)(?!\.[0-9]))",
    re.A,
)
_IPV6 = re.compile(
    r"(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{0,4}){2,7}|:(?::[0-9A-Fa-f]{0,4}){1,7})"
    r"(?:\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})?"
    r"(?:%[\w.\-]+)?",
    re.A,
)
_DIGIT_RUN = re.compile(r"[0-9]+")
_PG_STATEMENT_LINE = re.compile(r"LINE [0-9]+: ")
# `SomeError: message` in a stack or message: a class name, not a key.
_EXCEPTION_SUFFIXES = ("Error", "Exception", "Warning", "Exit", "Interrupt", "Failure", "Fault")

IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i & 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def is_card_number(digits: str) -> bool:
    """13-19 digits starting like a card network (3 Amex/Diners/JCB, 4 Visa, 5 Mastercard/Maestro,
    6 Discover/UnionPay, 22-27 Mastercard's 2-series) and passing Luhn. The leading digits keep
    Unix timestamps (seconds to nanoseconds: they start with 1 until 2033) out."""
    n = len(digits)
    if not 13 <= n <= 19 or not digits.isdigit():
        return False
    first = digits[0]
    if first not in "3456" and not (first == "2" and n == 16 and "22" <= digits[:2] <= "27"):
        return False
    return luhn_valid(digits)


def _card_span(candidate: str) -> int | None:
    """Where the card is in a candidate: all of it, or its first separated groups (a candidate
    can run on into the next number: `4111 1111 1111 1111 12`)."""
    digits = candidate.replace(" ", "").replace("-", "")
    if is_card_number(digits):
        return len(candidate)
    if len(digits) == len(candidate):
        return None
    run = ""
    for group in _DIGIT_RUN.finditer(candidate):
        run += group.group()
        if len(run) > 19:
            return None
        if len(run) >= 13 and is_card_number(run):
            return group.end()
    return None


def iban_valid(iban: str) -> bool:
    """Known country, that country's length, ISO 13616 mod-97 check digits."""
    if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban.isalnum():
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _iban_span(candidate: str) -> int | None:
    length = IBAN_LENGTHS.get(candidate[:2])
    if length is None:
        return None
    compact = candidate.replace(" ", "")
    if len(compact) < length or not iban_valid(compact[:length]):
        return None
    seen = 0
    for end, ch in enumerate(candidate):  # where its last character is in the spaced text
        if ch != " ":
            seen += 1
            if seen == length:
                return end + 1
    return None


def _digits(text: str, pattern: re.Pattern[str]) -> str:
    out: list[str] = []
    last = 0
    for m in pattern.finditer(text):
        start = m.start()
        if start < last:
            continue
        kind = m.lastgroup
        begin = start - 2 if kind == "iban" else start
        if begin < last:
            continue
        found = _candidate(kind, text[begin : start + 1] + m.group(kind))
        if found is None or (kind == "ip" and (_is_version(text, begin, found[0]) or _is_url_host(text, begin))):
            continue
        out.append(text[last:begin])
        out.append(found[1])
        last = begin + found[0]
        while last < len(text) and text[last].isalnum():
            glued = _GLUED.match(text, last)
            kind = glued.lastgroup if glued else None
            found = _candidate(kind, glued.group(kind)) if glued and kind else None
            if found is None:
                break
            out.append(found[1])
            last += found[0]
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


def _is_url_host(text: str, begin: int) -> bool:
    """`http://10.0.0.5:8080/reports`: the server a page or API lives on, not a user's address."""
    return text.endswith("://", 0, begin)


def _is_version(text: str, begin: int, length: int) -> bool:
    """`Chrome/126.0.0.0`: browsers' reduced user agents, not an address."""
    return (
        begin >= 2 and text[begin - 1] == "/" and text[begin - 2].isalnum()
        and text.endswith(".0.0", 0, begin + length)
    )  # fmt: skip


def _candidate(kind: str | None, candidate: str) -> tuple[int, str] | None:
    """(length, placeholder) of the secret a candidate starts with, if it is one."""
    if kind == "iban":
        end = _iban_span(candidate)
        return None if end is None else (end, FILTERED_IBAN)
    if kind == "card":
        end = _card_span(candidate)
        return None if end is None else (end, FILTERED_CARD)
    end = _ipv4_span(candidate)
    return None if end is None else (end, FILTERED_IP)


def _ipv4_span(candidate: str) -> int | None:
    return len(candidate) if all(int(octet) <= 255 for octet in candidate.split(".")) else None


def _ipv6(m: re.Match[str]) -> str:
    text = m.group()
    start, string = m.start(), m.string
    if start and (string[start - 1].isalnum() or string[start - 1] in "_."):
        return text  # inside a word or a longer run (`app.js:12:34`)
    end = m.end()
    if end < len(string) and (string[end].isalnum() or string[end] == "_"):
        return text
    if text.strip(":") == "":
        return text  # `a :: b`
    address = text
    while address:
        try:
            ipaddress.IPv6Address(address)
            return FILTERED_IP + text[len(address) :]
        except ValueError:
            # `fe80::1:` at the end of a sentence: the address without its trailing colon.
            if not address.endswith(":") or address.endswith("::"):
                return text
            address = address[:-1]
    return text


def _looks_like_credential(token: str) -> bool:
    """`Bearer s3cr3t-token`, `Basic YWRtaW46...`, not `Bearer tokens` or `Basic authentication`."""
    if len(token) < 8:
        return False
    rest = token[1:]
    return (
        any(ch.isdigit() or ch in "-._~+/=" for ch in token)
        or (rest.lower() != rest and rest.upper() != rest)
        or len(token) >= 24
    )


def _auth_scheme(m: re.Match[str]) -> str:
    return m.group(1) + m.group(2) + FILTERED if _looks_like_credential(m.group(3)) else m.group()


def _url_auth(m: re.Match[str]) -> str:
    return m.group(1) + FILTERED + "@"


def _pairs(text: str) -> str:
    out: list[str] = []
    last = 0
    for m in _PAIR.finditer(text):
        if m.start() < last:
            continue  # inside a value already filtered
        key, separator, value = m.group(1), m.group(2), m.group(3)
        if not is_secret_key(key) or (":" in separator and key.endswith(_EXCEPTION_SUFFIXES)):
            continue
        if value == "?" or value == FILTERED or value[1:-1] == FILTERED:
            continue  # a normalised statement's placeholder, or already filtered
        out.append(text[last : m.end()])
        out.append(value[0] + FILTERED + value[0] if value[0] in "\"'" else FILTERED)
        last = m.end() + len(value)
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


def _scrub_line(text: str) -> str:
    """Every rule but PEM blocks (the only secret that spans lines), again until nothing changes:
    a placeholder can uncover a secret glued to the one it replaced (`<IBAN><card>`)."""
    for _ in range(5):
        out = _scrub_line_once(text)
        if out is text or out == text:
            return out
        text = out
    return text


def _scrub_line_once(text: str) -> str:
    if text.startswith("LINE ") and _PG_STATEMENT_LINE.match(text):
        # PostgreSQL quotes the failing statement in its error messages: no literal is kept.
        head, _, statement = text.partition(": ")
        return f"{head}: {normalize_sql(statement)}"
    if "://" in text and "@" in text:
        text = _URL_AUTH.sub(_url_auth, text)
    if "=" in text or ":" in text:
        lowered = text.lower()
        if any(word in lowered for word in _TEXT_WORDS):
            text = _pairs(text)
        if "bearer" in lowered or "basic" in lowered:
            text = _AUTH_SCHEME.sub(_auth_scheme, text)
        if "::" in text or text.count(":") >= 7:
            text = _IPV6.sub(_ipv6, text)
    elif "earer" in text or "asic" in text or "EARER" in text or "ASIC" in text:
        text = _AUTH_SCHEME.sub(_auth_scheme, text)
    # An IBAN has 8 digits or more, a card 13, an IPv4 address 4 and 3 dots (counted in C).
    raw = text.encode("utf-8", "surrogatepass")
    digits = len(raw) - len(raw.translate(None, b"0123456789"))
    if digits >= 8:
        return _digits(text, _DIGITS)
    if digits >= 4 and text.count(".") >= 3:
        return _digits(text, _DIGITS_IP)
    return text


def _scrub_text(text: str) -> str:
    """Line by line: the lines of a stack trace repeat (the same frames fail again and again),
    usually only its message line is new."""
    if "PRIVATE KEY" in text:
        text = _PEM.sub(FILTERED_PEM, text)
    if "\n" not in text:
        return _scrub_line(text)
    return "\n".join([_scrub_short(line) if len(line) <= _SHORT else _scrub_line(line) for line in text.split("\n")])


_SHORT = 512  # texts and lines up to this length are scrubbed once per distinct text
_scrub_short = lru_cache(maxsize=16384)(_scrub_text)
_MARGIN = 256  # more than the longest card, IBAN or IP: what is scrubbed past a cut


def scrub_text(text: Any) -> Any:
    """Free text with every value rule applied (non-strings are returned unchanged)."""
    if text.__class__ is not str:
        return text
    return _scrub_short(text) if len(text) <= _SHORT else _scrub_text(text)


def _scrub_capped(text: str, limit: int, marker: str) -> str:
    """Scrubbed, then cut to `limit`. The scrub sees _MARGIN characters past the cut, so a secret
    across it is still recognised; the unscrubbed end of what it saw (possibly half a secret, no
    longer recognisable) never reaches the output, even when placeholders shortened the text."""
    if len(text) <= limit:
        return scrub_text(text)
    if len(text) <= limit + _MARGIN:  # the scrub sees the whole text: nothing is half seen
        return _scrub_text(text)[:limit] + marker
    head = text[: limit + _MARGIN]
    out = _scrub_text(head)
    # What the scrub left unchanged at the end of `head`: its last characters, verbatim.
    a, b = out[-_MARGIN:], head[-_MARGIN:]
    same = 0
    while same < len(a) and a[-1 - same] == b[-1 - same]:
        same += 1
    return out[: min(limit, len(out) - same)] + marker


def cap(text: str | None, limit: int = MAX_STACK) -> str | None:
    """A stack trace (or any long free text) scrubbed and size-capped."""
    if not text:
        return text
    return _scrub_capped(text, limit, "\n" + TRUNCATED)
