"""SQL query patterns: what groups together, what stays apart, operation and table extraction,
and that nothing a span can carry makes the hot path raise or crawl."""

from __future__ import annotations

import hashlib
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_bridge.exporters.sql_normalize import normalize_sql, query_hash, query_type, table_name

BASE = "SELECT id, name FROM users WHERE id IN (1, 2, 3) AND name = 'bob'"
SAME_AS_BASE = {
    "literals": "SELECT id, name FROM users WHERE id IN (7) AND name = 'alice'",
    "pyformat": "SELECT id, name FROM users WHERE id IN (%s, %s) AND name = %s",
    "named-pyformat": "SELECT id, name FROM users WHERE id IN (%(a)s) AND name = %(n)s",
    "numbered": "SELECT id, name FROM users WHERE id IN ($1, $2, $23) AND name = $4",
    "qmark": "SELECT id, name FROM users WHERE id IN (?, ?) AND name = ?",
    "named": "SELECT id, name FROM users WHERE id IN (:ids) AND name = :name",
    "keyword-case": "select ID, Name from USERS where id in (1,2,3) and NAME = 'bob'",
    "whitespace": "SELECT id,name\n\tFROM   users\r\nWHERE id IN(1 ,2) AND name='bob' ;",
    "comments": "/* a */ SELECT id, name FROM users -- b\nWHERE id IN (1) AND name = /* c */ ''",
    "sqlcommenter": BASE + " /*db_driver='psycopg%%3A3.1.9',"
    "traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/",
    "numbers": "SELECT id, name FROM users WHERE id IN (-1, 2.5, 1e3) AND name = E'b\\'ob'",
    "dollar-quote": "SELECT id, name FROM users WHERE id IN (1) AND name = $$bob$$",
    "tagged-dollar-quote": "SELECT id, name FROM users WHERE id IN (1) AND name = $q$it's$q$",
    "long-in-list": "SELECT id, name FROM users WHERE id IN (" + "1, " * 500 + "2) AND name = ''",
}


@pytest.mark.parametrize("variant", SAME_AS_BASE.values(), ids=SAME_AS_BASE.keys())
def test_variants_of_one_query_share_a_hash(variant: str) -> None:
    assert query_hash(normalize_sql(variant)) == query_hash(normalize_sql(BASE))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param("SELECT a FROM t1", "SELECT a FROM t2", id="table"),
        pytest.param("SELECT a FROM t", "SELECT b FROM t", id="column"),
        pytest.param("SELECT a FROM t WHERE x = 1", "SELECT a FROM t WHERE y = 1", id="predicate"),
        pytest.param('SELECT a FROM "Users"', 'SELECT a FROM "users"', id="quoted-identifier"),
        pytest.param("SELECT a FROM t WHERE a = 1", "SELECT a FROM t WHERE a = 1::int", id="cast"),
        pytest.param("SELECT a - 1 FROM t", "SELECT a FROM t", id="subtraction"),
        pytest.param("UPDATE t SET a = 1", "DELETE FROM t WHERE a = 1", id="operation"),
    ],
)
def test_different_queries_keep_different_hashes(first: str, second: str) -> None:
    assert query_hash(normalize_sql(first)) != query_hash(normalize_sql(second))


@pytest.mark.parametrize(
    ("statement", "pattern"),
    [
        ("SELECT * FROM users WHERE id IN (1, 2, 3)", "select * from users where id in (?)"),
        ("SELECT a::int, b::text[] FROM t WHERE c = $1::uuid",
         "select a::int, b::text[] from t where c = ?::uuid"),
        ('SELECT t2.col1, "X1" FROM table1 t2 WHERE v2 = 3',
         'select t2.col1, "X1" from table1 t2 where v2 = ?'),
        ("INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y'), (3, 'z');",
         "insert into t(a, b) values (?, ?)"),
        ("SELECT * FROM t WHERE a = ANY(ARRAY[1, 2, 3])",
         "select * from t where a = any (array[?])"),
        ("SELECT * FROM t WHERE (a, b) IN ((1, 2), (3, 4))",
         "select * from t where (a, b) in ((?, ?))"),
        ("SELECT * FROM t WHERE a IN (SELECT b FROM u)",
         "select * from t where a in (select b from u)"),
        ("SELECT $body$ it's -- not a comment $body$, 'a''b', 0x1F", "select ?, ?, ?"),
        ("SELECT count(*) FROM t WHERE a >= -5 AND b <> 2",
         "select count(*) from t where a >= ? and b <> ?"),
        ("SELECT 1 /*traceparent='00-ab-cd-01'*/", "select ?"),
        ("  -- nothing but a comment\n  ", ""),
    ],
)  # fmt: skip
def test_patterns(statement: str, pattern: str) -> None:
    assert normalize_sql(statement) == pattern


def test_query_hash_is_a_sha256_prefix() -> None:
    pattern = normalize_sql(BASE)
    assert query_hash(pattern) == hashlib.sha256(pattern.encode()).hexdigest()[:16]
    assert len(query_hash("")) == 16 and query_hash("\ud800") != query_hash("")


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("SELECT 1", "SELECT"),
        ("insert into t values (1)", "INSERT"),
        ("Update t set a = 1", "UPDATE"),
        ("DELETE FROM t", "DELETE"),
        ("WITH x AS (SELECT * FROM s) INSERT INTO t SELECT * FROM x", "INSERT"),
        ("WITH x AS (DELETE FROM s RETURNING *), y AS (SELECT 1) SELECT * FROM x, y", "SELECT"),
        ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) UPDATE t SET a = 1",
         "UPDATE"),
        ("WITH x AS (SELECT 1) (SELECT * FROM x)", "SELECT"),
        ("/* app */ -- note\n  select 1", "SELECT"),
        ("((SELECT 1) UNION (SELECT 2))", "SELECT"),
        ("EXPLAIN ANALYZE SELECT 1", "EXPLAIN"),
        ("merge into t using s on t.id = s.id when matched then do nothing", "MERGE"),
        ("COPY t FROM STDIN", "COPY"),
        ("begin", "BEGIN"),
        ("SET search_path TO public", "SET"),
        ("", None),
        ("   \n\t ", None),
        ("-- just a comment", None),
        ("/* unterminated comment SELECT 1", None),
        ("'SELECT'", None),
    ],
)  # fmt: skip
def test_query_type(statement: str, expected: str | None) -> None:
    assert query_type(statement) == expected


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("SELECT * FROM users WHERE id = 1", "users"),
        ("select a from public.users u join orders o on o.uid = u.id", "public.users"),
        ('SELECT * FROM "Users"', "Users"),
        ('SELECT * FROM "my schema"."Odd""Name"', 'my schema.Odd"Name'),
        ("SELECT * FROM ONLY parent", "parent"),
        ("SELECT extract(year FROM created) FROM events", "events"),
        ("SELECT * FROM (SELECT * FROM inner_t) AS s", "inner_t"),
        ("DELETE FROM ONLY sessions WHERE expires < now()", "sessions"),
        ("INSERT INTO audit.log (a) VALUES (1)", "audit.log"),
        ("UPDATE ONLY accounts SET balance = 0", "accounts"),
        ("MERGE INTO target t USING source s ON t.id = s.id", "target"),
        ("COPY measurements (a, b) FROM STDIN", "measurements"),
        ("TRUNCATE TABLE logs", "logs"),
        ("TRUNCATE ONLY logs, other", "logs"),
        ("CREATE TABLE IF NOT EXISTS public.items (id int)", "public.items"),
        ("CREATE UNLOGGED TABLE scratch (id int)", "scratch"),
        ("ALTER TABLE IF EXISTS ONLY items ADD COLUMN x int", "items"),
        ("DROP TABLE IF EXISTS old_items", "old_items"),
        ("WITH x AS (SELECT * FROM s) INSERT INTO t SELECT * FROM x", "t"),
        ("WITH x AS (SELECT * FROM s) SELECT * FROM x", "x"),
        ("SELECT 1", None),
        ("SELECT now()", None),
        ("SELECT * FROM generate_series(1, 3)", None),
        ("BEGIN", None),
        ("CREATE INDEX idx ON items (id)", None),
        ("", None),
        ("SELECT * FROM", None),
    ],
)
def test_table_name(statement: str, expected: str | None) -> None:
    assert table_name(statement) == expected


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT 'unterminated",
        'SELECT "unterminated',
        "SELECT $$unterminated",
        "SELECT E'trailing backslash\\",
        "SELECT ((((((",
        "SELECT ))))) FROM (",
        "/* open comment",
        "INSERT INTO t VALUES (1), (",
        "\x00\x01\ufffd\U0001f600 ::: $ % ? [ ]",
        "\ud800 lone surrogate",
    ],
)
def test_broken_input_does_not_raise(statement: str) -> None:
    pattern = normalize_sql(statement)
    assert normalize_sql(pattern) == pattern
    query_hash(pattern), query_type(statement), table_name(statement)


@pytest.mark.parametrize(
    "huge",
    [
        pytest.param("SELECT " + "x, " * 350_000 + "1 FROM t", id="select-list"),
        pytest.param("INSERT INTO t VALUES " + "(1, 'a'), " * 100_000 + "(2, 'b')", id="values"),
        pytest.param("(" * 1_000_000, id="parentheses"),
        pytest.param("'" + "a" * 1_000_000, id="unterminated-string"),
    ],
)
def test_a_megabyte_statement_returns_quickly(huge: str) -> None:
    assert len(huge) >= 1_000_000
    started = time.perf_counter()
    normalize_sql(huge), query_type(huge), table_name(huge)
    # Only the first 64 KiB is read: tens of ms; the bound leaves room for slow CI machines.
    assert time.perf_counter() - started < 2.0


SQLISH = st.lists(
    st.sampled_from(
        ["select", "from", " ", "\n", "t1", "in", "values", "array", "(", ")", "[", "]", ",", ".",
         ";", "'", "''", '"', "$$", "$a$", "$1", "%s", "%(x)s", "?", ":n", "::", ":", "-", "--",
         "/*", "*/", "E'", "\\", "1", "2.5e3", "=", "İ", "\u0301", "with", "x"]
    ),
    max_size=60,
).map("".join)  # fmt: skip


@settings(database=None, deadline=None, max_examples=300)
@given(st.one_of(st.text(), SQLISH))
def test_any_text_normalizes_idempotently_without_raising(text: str) -> None:
    pattern = normalize_sql(text)
    assert normalize_sql(pattern) == pattern
    assert len(query_hash(pattern)) == 16
    query_type(text), table_name(text)
