"""Scrubbing rules at ingest (DESIGN §8, Sentry Relay's defaults): every rule with what it must
catch and the near-misses it must leave alone."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_bridge.privacy import scrub, scrub_headers
from otel_bridge.secret_keys import (
    FILTERED,
    FILTERED_CARD,
    FILTERED_IBAN,
    FILTERED_IP,
    FILTERED_PEM,
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_STRING,
    TOO_DEEP,
    is_secret_key,
)
from otel_bridge.secret_text import cap, is_card_number, scrub_text

PEM = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n"
    "MzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu\n"
    "-----END PRIVATE KEY-----"
)


# --- keys -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", [
    "password", "PASSWORD", "user_password", "passwd", "secret", "client_secret", "api_key", "apikey",
    "api-key", "X-Api-Key", "auth", "authorization", "credentials", "X-Amz-Credential", "mysql_pwd",
    "privatekey", "private_key", "private-key", "token", "access_token", "refresh-token", "csrftoken",
    "bearer", "session", "sessionid", "PHPSESSID", "sentrysid", "sudo", "su", "symfony", "connect.sid",
    "cookie", "set-cookie", "csrf", "_xsrf", "xsrf-token", "X-Amz-Signature",
])  # fmt: skip
def test_relay_default_keys_are_secret(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize("key", [
    "session.id", "session.previous_id", "user.id", "http.route", "url.full", "db.query.text",
    "exception.message", "gen_ai.usage.input_tokens", "x-request-id", "user_agent.original", "sub",
])  # fmt: skip
def test_identifiers_are_not_secret(key: str) -> None:
    assert not is_secret_key(key)


def test_values_under_secret_keys_are_filtered_at_any_depth() -> None:
    context = {
        "password": "hunter2", "session.id": "s-1", "user": {"name": "bob", "api_key": {"id": 1}},
        "items": [{"token": "t"}, "plain"], "count": 3, "ok": True, "nothing": None,
    }  # fmt: skip
    assert scrub(context) == {
        "password": FILTERED, "session.id": "s-1", "user": {"name": "bob", "api_key": FILTERED},
        "items": [{"token": FILTERED}, "plain"], "count": 3, "ok": True, "nothing": None,
    }  # fmt: skip


def test_statements_in_contexts_keep_no_literal() -> None:
    context = {"db.query.text": "SELECT * FROM users WHERE email = 'bob@example.com' AND pin = 1234",
               "db.statement": "UPDATE users SET password = 'hunter2' WHERE id = 7"}  # fmt: skip
    assert scrub(context) == {"db.query.text": "select * from users where email = ? and pin = ?",
                              "db.statement": "update users set password = ? where id = ?"}  # fmt: skip


def test_normalised_statements_are_left_alone() -> None:
    query = "select * from users where email = ? and password = ?"
    assert scrub({"query": query}) == {"query": query}


def test_postgres_error_messages_keep_no_literal_of_the_statement() -> None:
    message = ('syntax error at or near "VALUE"\n'
               "LINE 1: INSERT INTO users (email, password) VALUE ('bob@example.com', 'hunter2')")  # fmt: skip
    scrubbed = scrub_text(message)
    assert "hunter2" not in scrubbed and "bob@example.com" not in scrubbed
    assert scrubbed.startswith('syntax error at or near "VALUE"\nLINE 1: insert into users')


# --- cards ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111", "5500-0000-0000-0004",
    "5500 0000 0000 0004", "378282246310005", "3782 822463 10005", "6011111111111117",
    "2223000048400011", "4222222222222",
])  # fmt: skip
def test_card_numbers_passing_luhn_are_filtered(text: str) -> None:
    assert scrub_text(f"paid with {text}, thanks") == f"paid with {FILTERED_CARD}, thanks"
    assert scrub_text(text) == FILTERED_CARD


def test_cards_are_found_next_to_other_numbers() -> None:
    assert scrub_text("ref 22 4111 1111 1111 1111") == f"ref 22 {FILTERED_CARD}"
    assert scrub_text("4111 1111 1111 1111 12/27") == f"{FILTERED_CARD} 12/27"
    assert scrub_text("card=4111111111111111;") == f"card={FILTERED_CARD};"
    assert scrub({"n": 4111111111111111, "small": 42}) == {"n": FILTERED_CARD, "small": 42}
    glued = "DE89370400440532013000DE893704004405320130004111 1111 1111 1111-4111111111111111"
    assert scrub_text(glued) == f"{FILTERED_IBAN}{FILTERED_IBAN}{FILTERED_CARD}-{FILTERED_CARD}"


@pytest.mark.parametrize("text", [
    "4111 1111 1111 1112",  # 16 digits, Luhn fails
    "4111111111111112",
    "order 1234567812345678",  # starts like no card network
    "order #2024-000123-4567",
    "at 1790000000000 ms",  # Unix ms timestamp
    "at 1790000000000000000 ns",  # Unix ns timestamp
    "at 1790000000000000 us",
    "id 123e4567-e89b-12d3-a456-426614174000",
    "42424242424242424242",  # 20 digits: no card
    "tel +1 555 0100",
])  # fmt: skip
def test_numbers_that_are_not_cards_are_kept(text: str) -> None:
    assert scrub_text(text) == text


def test_card_check() -> None:
    assert is_card_number("4111111111111111")
    assert not is_card_number("1111111111111117")  # passes Luhn, but no card starts with 1
    assert not is_card_number("4111111111111112")
    assert not is_card_number("411111111111")  # 12 digits


# --- IBANs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "DE89 3704 0044 0532 0130 00", "DE89370400440532013000", "GB82WEST12345698765432",
    "GB82 WEST 1234 5698 7654 32", "FR14 2004 1010 0505 0001 3M02 606", "NL91ABNA0417164300",
])  # fmt: skip
def test_ibans_are_filtered(text: str) -> None:
    assert scrub_text(f"IBAN: {text} (EUR)") == f"IBAN: {FILTERED_IBAN} (EUR)"


def test_an_iban_followed_by_words_or_after_a_lookalike() -> None:
    assert scrub_text("DE89 3704 0044 0532 0130 00 EUR") == f"{FILTERED_IBAN} EUR"
    assert scrub_text("XX12 DE89370400440532013000") == f"XX12 {FILTERED_IBAN}"


@pytest.mark.parametrize("text", [
    "DE88370400440532013000",  # wrong check digits
    "XX89370400440532013000",  # no such country
    "GB82WEST1234569876543",  # one character short
    "AB12 CDEF GHIJ KLMN",
])  # fmt: skip
def test_iban_lookalikes_are_kept(text: str) -> None:
    assert scrub_text(text) == text


# --- PEM keys, URL credentials, auth schemes, key=value pairs --------------------------------------
def test_pem_private_keys_are_filtered_whole_even_when_cut() -> None:
    assert scrub_text(f"key:\n{PEM}\nend") == f"key:\n{FILTERED_PEM}\nend"
    cut = PEM[:80]  # a capped string may end inside the key
    assert scrub_text(f"key: {cut}") == f"key: {FILTERED_PEM}"
    public = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkq\n-----END PUBLIC KEY-----"
    assert scrub_text(public) == public


@pytest.mark.parametrize(("text", "expected"), [
    ("https://admin:hunter2@db.internal/x", "https://[Filtered]@db.internal/x"),
    ("postgresql://app:s3cret@db:5432/cqms?sslmode=require", "postgresql://[Filtered]@db:5432/cqms?sslmode=require"),
    ("redis://:p@ss@cache:6379/0", "redis://[Filtered]@cache:6379/0"),
    ("git clone https://ghp_abc123@github.com/o/r", "git clone https://[Filtered]@github.com/o/r"),
])  # fmt: skip
def test_url_credentials_are_filtered(text: str, expected: str) -> None:
    assert scrub_text(text) == expected


@pytest.mark.parametrize("text", [
    "https://app.example.com/audits/42?tab=scores#top", "https://example.com/users/bob@example.com",
    "https://example.com/?email=bob@example.com", "mailto:bob@example.com", "see https://example.com/a.b.c",
])  # fmt: skip
def test_urls_without_credentials_are_kept(text: str) -> None:
    assert scrub_text(text) == text


@pytest.mark.parametrize(("text", "expected"), [
    ("https://app.example.com/reset?token=abc123&lang=en", "https://app.example.com/reset?token=[Filtered]&lang=en"),
    ("/login?next=/a&api_key=k-123#x", "/login?next=/a&api_key=[Filtered]"),  # a # may be the secret's
    ("https://app.example.com/cb#access_token=eyJ0.eyJ1.sig&state=x", "https://app.example.com/cb#access_token=[Filtered]&state=x"),
    ("redirect_uri=https://x.example/cb?token=abc", "redirect_uri=https://x.example/cb?token=[Filtered]"),
    ("https://s3.example.com/f?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=abc", "https://s3.example.com/f?X-Amz-Credential=[Filtered]&X-Amz-Signature=[Filtered]"),
    ("login failed password=hunter2 user=bob", "login failed password=[Filtered] user=bob"),
    ('{"password": "hunter2", "user": "bob"}', '{"password": "[Filtered]", "user": "bob"}'),
    ("token: abc123 for bob", "token: [Filtered] for bob"),
    ("Authorization: Bearer abc.def-123", "Authorization: [Filtered]"),
    ("authorization=Basic YWRtaW46aHVudGVyMg==", "authorization=[Filtered]"),
    ("Cookie: theme=dark; sessionid=xyz; csrftoken=abc", "Cookie: [Filtered]; sessionid=[Filtered]; csrftoken=[Filtered]"),
    ("sent Bearer s3cr3t-token upstream", "sent Bearer [Filtered] upstream"),
    ("Basic YWRtaW46aHVudGVyMg== was refused", "Basic [Filtered] was refused"),
])  # fmt: skip
def test_credentials_in_free_text_are_filtered(text: str, expected: str) -> None:
    assert scrub_text(text) == expected


@pytest.mark.parametrize("text", [
    "session.id=abc-123", "missing Bearer token", "Basic authentication required",
    "TokenExpiredError: token expired", "AuthenticationError: invalid user for tenant 7",
    "KeyError: 'password'", "user=bob role=Auditor",
])  # fmt: skip
def test_lookalike_credentials_are_kept(text: str) -> None:
    assert scrub_text(text) == text


# --- IP addresses ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ("client 203.0.113.77 refused", f"client {FILTERED_IP} refused"),
    ("x-forwarded-for: 203.0.113.77, 10.0.0.1.", f"x-forwarded-for: {FILTERED_IP}, {FILTERED_IP}."),
    ("via 203.0.113.77:8080/x", f"via {FILTERED_IP}:8080/x"),  # a URL host is the server: kept (below)
    ("GET /lookup/203.0.113.77?full=1", f"GET /lookup/{FILTERED_IP}?full=1"),
    ("from 2001:db8::7334 port 22", f"from {FILTERED_IP} port 22"),
    ("peer [2001:db8:85a3:0:0:8a2e:370:7334]:443", f"peer [{FILTERED_IP}]:443"),
    ("IP:2001:db8::7334", f"IP:{FILTERED_IP}"),
    ("via ::ffff:192.0.2.1", f"via {FILTERED_IP}"),
    ("fe80::1%eth0 down", f"{FILTERED_IP} down"),
    ("to ::1:", f"to {FILTERED_IP}:"),
])  # fmt: skip
def test_ip_addresses_in_free_text_are_filtered(text: str, expected: str) -> None:
    assert scrub_text(text) == expected


@pytest.mark.parametrize("text", [
    "version 2.4.1", "python 3.11.7", "oid 1.3.6.1.4.1", "300.1.1.1", "Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0.0.0 Edg/126.0.0.0",
    "at 12:30:45.123", "2026-11-27T12:30:45Z", "mac 00:1A:2B:3C:4D:5E", "std::vector<int>", "a :: b",
    "at render (https://cqms.example.com/static/app.3.js:1:1003)", "id 3f1c1f9e-4a1b-4c2d-9e8f-0123456789ab",
])  # fmt: skip
def test_ip_lookalikes_are_kept(text: str) -> None:
    assert scrub_text(text) == text


# --- headers --------------------------------------------------------------------------------------
def test_headers() -> None:
    headers = {
        "authorization": ["Bearer s3cr3t"], "cookie": ["sessionid=abc"], "x_api_key": ["k"],
        "x_forwarded_for": ["203.0.113.77, 10.0.0.1"], "x-real-ip": ["203.0.113.77"],
        "forwarded": ["for=203.0.113.77;proto=https"], "referer": ["https://app.example.com/?token=abc"],
        "user-agent": ["Mozilla/5.0 Chrome/126.0.0.0"], "accept": ["a", "b"],
        "x-debug": ["client 2001:db8::7334"],
    }  # fmt: skip
    assert scrub_headers(headers) == {
        "authorization": FILTERED, "cookie": FILTERED, "x-api-key": FILTERED,
        "x-forwarded-for": FILTERED_IP, "x-real-ip": FILTERED_IP, "forwarded": FILTERED_IP,
        "referer": "https://app.example.com/?token=[Filtered]", "user-agent": "Mozilla/5.0 Chrome/126.0.0.0",
        "accept": ["a", "b"], "x-debug": f"client {FILTERED_IP}",
    }  # fmt: skip


# --- sizes ----------------------------------------------------------------------------------------
def test_strings_and_structures_are_capped() -> None:
    long = scrub("x" * (MAX_STRING * 2))
    assert len(long) < MAX_STRING + 20 and long.endswith("[truncated]")
    deep: Any = "bottom"
    for _ in range(MAX_DEPTH + 5):
        deep = {"d": deep}
    scrubbed = scrub(deep)
    for _ in range(MAX_DEPTH):
        scrubbed = scrubbed["d"]
    assert scrubbed == TOO_DEEP
    many = scrub(list(range(MAX_ITEMS + 50)))
    assert len(many) == MAX_ITEMS + 1 and many[-1].endswith("50 more items")
    wide = scrub({f"k{i}": i for i in range(MAX_ITEMS + 5)})
    assert len(wide) == MAX_ITEMS + 1


def test_stacks_are_scrubbed_and_capped() -> None:
    stack = 'Traceback (most recent call last):\n  File "app.py", line 3, in pay\nValueError: card 4111 1111 1111 1111 from 203.0.113.77'
    assert cap(stack) == (
        'Traceback (most recent call last):\n  File "app.py", line 3, in pay\n'
        f"ValueError: card {FILTERED_CARD} from {FILTERED_IP}"
    )
    assert cap(None) is None and cap("") == ""
    assert cap("a" * 100, limit=50) == "a" * 50 + "\n...[truncated]"


@pytest.mark.parametrize("cut", range(-25, 25, 3))
def test_a_secret_across_the_cap_never_leaks_in_part(cut: int) -> None:
    """The cap falls inside, just before or just after a card or an address: no digit of it
    is kept unfiltered, even when earlier placeholders shrank the text."""
    prefix = "-----BEGIN PRIVATE KEY-----\n" + "A" * 400 + "\n-----END PRIVATE KEY-----\n" + "w " * 300
    limit = len(prefix) + cut
    for secret in ("4111 1111 1111 1111", "203.0.113.77", "DE89 3704 0044 0532 0130 00"):
        out = cap(prefix + secret + " tail " * 100, limit=limit)
        assert out is not None and len(out) <= limit + len("\n...[truncated]")
        assert "4111" not in out and "203.0" not in out and "3704" not in out, out[-60:]


# --- properties -----------------------------------------------------------------------------------
SECRET_PIECES = st.sampled_from([
    "4111 1111 1111 1111", "DE89370400440532013000", "203.0.113.77", "2001:db8::7334", "password=hunter2",
    "https://admin:hunter2@db.internal/x", "Bearer s3cr3t-token", PEM, " ", "\n", "=", ":", "-", ".",
])  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(SECRET_PIECES, st.text(max_size=12)), max_size=12).map("".join))
def test_scrubbing_never_raises_and_is_idempotent(text: str) -> None:
    once = scrub_text(text)
    assert scrub_text(once) == once
    assert scrub(scrub({"v": text})) == scrub({"v": text})


def test_an_ip_as_a_url_host_is_the_server_not_a_user() -> None:
    assert scrub_text("http://127.0.0.1:8000/audits/reports") == "http://127.0.0.1:8000/audits/reports"
    assert scrub_text("GET http://10.0.0.5/x from 203.0.113.9") == "GET http://10.0.0.5/x from [Filtered:ip]"
