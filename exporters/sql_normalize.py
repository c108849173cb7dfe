"""Query pattern, operation and primary table of a SQL statement (pure, stdlib only).

`normalize_sql` works like pg_stat_statements: literals and placeholders become `?`, comments go,
keywords are lower-cased and tokens re-spaced by fixed rules, so statements differing only in
values, placeholder style, layout or IN-list length share one `query_hash`; a pattern never holds
a literal. It runs once per DB span, so one compiled tokenizer regex drives everything, and
nothing raises: an unclosed quote, comment or bracket simply runs to the end of the text.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from functools import lru_cache

__all__ = ["first_keyword", "normalize_sql", "query_hash", "query_type", "sql_facts", "table_name"]

# Only the head of a giant statement (multi-megabyte bulk INSERTs exist) is read, so one span
# cannot cost more than a few milliseconds; the head decides the pattern anyway.
MAX_STATEMENT_CHARS = 64 * 1024

# Whitespace and comments are swallowed before each token so they never reach Python. Groups:
# 1 word (E'..', N'..', U&'..' are strings, not words), 2 literal or placeholder (`::` casts are
# not `:name` placeholders; 3 is a dollar-quote tag), 4 anything else, kept verbatim.
_TOKEN = re.compile(
    r"""
    \s*+(?:(?:--[^\n]*|/\*.*?(?:\*/|\Z))\s*+)*+
    (?: ((?![eEnNbBxX]'|[uU]&')[^\W\d][\w$]*+)
      | ( 0[xX][0-9a-fA-F]++ | \d+\.?\d*(?:[eE][+-]?\d+)? | \.\d+(?:[eE][+-]?\d+)?
        | '[^']*+(?:''[^']*+)*+'?
        | [eE]'[^'\\]*+(?:(?:\\.|'')[^'\\]*+)*+'?
        | (?:[uU]&|[nNbBxX])'[^']*+(?:''[^']*+)*+'?
        | \$(?:\d++|((?:[^\W\d]\w*+)?)\$(?:.*?\$\3\$|.*+))
        | %(?:\(\w++\))?s | \? | :[^\W\d]\w*+ )
      | ( [(),;.\[\]] | "[^"]*+(?:""[^"]*+)*+"? | `[^`]*+`?
        | ::|->>|\#>>|=>|[<>!=]=|<>|\|\||->|\#>|@>|<@|&&|<<|>>|!?~\*?|[-+*/<>=~!@\#%^&|]
        | . )
    )?
    """,
    re.VERBOSE | re.DOTALL,
)

# Words after which `(` opens a group rather than a call, and `-` is a sign rather than a
# subtraction. Both only shape the pattern's text, so the list need not be complete.
_KEYWORDS = frozenset(
    "all and any as between by case conflict distinct else exists filter from having ilike in"
    " is join lateral like limit not offset on or over returning select set some then using"
    " values when where with".split()
)
_SIGN_AFTER = _KEYWORDS | {"(", ",", "[", ";"}
_OPERATOR_START = frozenset("+-*/<>=~!@#%^&|")
_NO_SPACE_BEFORE = frozenset({",", ")", "]", ".", ";", "["})
_NO_SPACE_AFTER = frozenset({"(", "[", "."})
# Only ASCII is folded: str.lower() can turn one letter into a letter plus a combining mark,
# which tokenizes differently and would break idempotence.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

_MAIN_STATEMENTS = frozenset({"select", "insert", "update", "delete", "merge"})
_DDL_MODIFIERS = frozenset({"or", "replace", "temp", "temporary", "unlogged", "global", "local"})
_NAME_PREFIXES = frozenset({"only", "table", "if", "not", "exists", "into", "ignore"})


def normalize_sql(statement: str) -> str:
    """The pattern: `SELECT * FROM t WHERE id IN (1, 2)` -> `select * from t where id in (?)`."""
    if not isinstance(statement, str):
        return ""
    out: list[str] = []
    opens: list[int] = []  # indices in `out` of unclosed `(` / `[`
    first_row_end = -1  # index in `out` of the `)` closing the first VALUES row
    for word, literal, _, tok in _TOKEN.findall(statement, 0, MAX_STATEMENT_CHARS):
        if word:
            out.append(word.lower() if word.isascii() else word.translate(_ASCII_LOWER))
        elif literal:
            # `x = -1` and `x = 1` are one pattern; `a - 1` keeps its operator.
            while out and out[-1] == "-" and (
                len(out) == 1 or out[-2] in _SIGN_AFTER or out[-2][0] in _OPERATOR_START
            ):
                out.pop()
            out.append("?")
        elif tok == "(" or tok == "[":
            opens.append(len(out))
            out.append(tok)
        elif (tok == ")" or tok == "]") and opens:
            start = opens.pop()
            opener, before = out[start], out[start - 1] if start else ""
            if (before == "in" and opener == "(" and tok == ")") or (
                before == "array" and opener == "[" and tok == "]"
            ):
                _collapse_list(out, start + 1)
            elif opener == "(" and tok == ")":
                if before == "values":
                    first_row_end = len(out)
                elif before == "," and start - 2 == first_row_end:
                    del out[start - 1 :]  # a further VALUES row: the first stands for all
                    continue
            out.append(tok)
        elif tok:
            out.append(tok)
    while out and out[-1] == ";":
        out.pop()
    return _render(out)


def _collapse_list(out: list[str], begin: int) -> None:
    """Keep only the first item if `out[begin:]` is `?, ?, ...` or `(?, ?), (?, ?), ...`."""
    items = out[begin:]
    width = items.index(")") + 2 if items[:1] == ["("] and ")" in items else 2
    first = items[: width - 1]
    if set(first) <= {"(", "?", ",", ")"} and items + [","] == (first + [","]) * (
        (len(items) + 1) // width
    ):
        del out[begin + width - 1 :]


def _render(tokens: list[str]) -> str:
    """Spacing depends on the tokens alone, never on the input's layout (`a=1` is `a = 1`), and
    no two glued tokens read back differently, which keeps normalization idempotent."""
    parts: list[str] = []
    prev = ""
    for tok in tokens:
        if not prev or tok in _NO_SPACE_BEFORE or prev in _NO_SPACE_AFTER:
            pass
        elif tok == "::" or prev == "::":
            if prev == ":" or tok == ":":  # `:` glued to `::` would read back as `::` + `:`
                parts.append(" ")
        elif tok != "(" or prev in _KEYWORDS or not (prev[0].isalnum() or prev[0] in '_"`'):
            parts.append(" ")  # calls stay tight (`count(*)`), groups are spaced (`in (?)`)
        parts.append(tok)
        prev = tok
    return "".join(parts)


def query_hash(normalized: str) -> str:
    """First 16 hex digits of the SHA-256 of a pattern from `normalize_sql`."""
    text = normalized if isinstance(normalized, str) else ""
    # Lone surrogates (lossy decoding upstream) must hash, not raise.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def first_keyword(text: str) -> str | None:
    """The first word after leading comments and parentheses, upper-cased; None if none."""
    word = _leading_word(_significant(text)) if isinstance(text, str) else None
    return word.upper() if word else None


def query_type(statement: str) -> str | None:
    """`SELECT`, `INSERT`...: the first keyword, except that `WITH` gives the main statement's."""
    if not isinstance(statement, str):
        return None
    tokens = _significant(statement)
    word = _leading_word(tokens)
    if word == "with":
        word = _main_after_ctes(tokens) or word
    return word.upper() if word else None


def table_name(statement: str) -> str | None:
    """The primary table as written (`public.users`; `"Users"` -> `Users`), or None. Case is
    kept, as OpenTelemetry recommends for `db.collection.name`; only the quotes go."""
    if not isinstance(statement, str):
        return None
    tokens = _significant(statement)
    word = _leading_word(tokens)
    if word == "with":
        word = _main_after_ctes(tokens)
    if word in ("select", "delete"):
        return _from_table(tokens)
    if word in ("insert", "merge", "update", "copy", "truncate"):
        return _name(tokens)[0]
    if word in ("create", "alter", "drop"):
        for is_word, tok in tokens:
            if is_word and tok.lower() == "table":
                return _name(tokens)[0]
            if not is_word or tok.lower() not in _DDL_MODIFIERS:
                return None  # an index, view, function...: no table of its own
    return None


_Tokens = Iterator[tuple[bool, str]]  # (is a word, text) for each token after comments go


def _significant(statement: str) -> _Tokens:
    for m in _TOKEN.finditer(statement, 0, MAX_STATEMENT_CHARS):
        word, literal, _, other = m.groups()
        if word or literal or other:
            yield bool(word), word or literal or other


def _leading_word(tokens: _Tokens) -> str | None:
    for is_word, tok in tokens:
        if tok != "(":
            return tok.lower() if is_word else None
    return None


def _main_after_ctes(tokens: _Tokens) -> str | None:
    """Consume the CTEs of a WITH; return the main statement's keyword (lower-case)."""
    depth, prev = 0, ""
    for is_word, tok in tokens:
        if tok == "(":
            if depth == 0 and prev == ")":  # `WITH x AS (...) (SELECT ...)`
                return _leading_word(tokens)
            depth += 1
        elif tok == ")":
            depth -= 1
        elif depth == 0 and is_word and tok.lower() in _MAIN_STATEMENTS:
            return tok.lower()
        prev = tok
    return None


def _name(tokens: _Tokens) -> tuple[str | None, str]:
    """Read a possibly qualified name after ONLY / IF NOT EXISTS / INTO...; also return the
    text of the token after it, which the caller still has to look at."""
    is_word, tok = next(tokens, (False, ""))
    while is_word and tok.lower() in _NAME_PREFIXES:
        is_word, tok = next(tokens, (False, ""))
    parts: list[str] = []
    while is_word or tok[:1] in ('"', "`"):
        if not is_word:  # quoted: drop the quotes, undouble the inner ones
            quote = tok[0]
            tok = tok[1:-1] if len(tok) > 1 and tok.endswith(quote) else tok[1:]
            tok = tok.replace(quote * 2, quote)
        parts.append(tok)
        is_word, tok = next(tokens, (False, ""))
        if tok != ".":
            break
        is_word, tok = next(tokens, (False, ""))
    return (".".join(parts) or None), tok


def _from_table(tokens: _Tokens) -> str | None:
    """The table after the first top-level FROM, else after the first FROM in a subquery."""
    depth, fallback = 0, None
    tok = next(tokens, (False, ""))[1]
    while tok:
        if tok == "(":
            depth += 1
        elif tok == ")":
            depth -= 1
        elif tok.lower() == "from":  # only a word can spell it
            name, tok = _name(tokens)
            if name is not None and tok != "(":  # `FROM unnest(...)` is a call, not a table
                if depth <= 0:
                    return name
                fallback = fallback or name
            continue  # `tok` is the token after the name and still needs looking at
        tok = next(tokens, (False, ""))[1]
    return fallback


@lru_cache(maxsize=4096)
def sql_facts(statement: str) -> tuple[str, str, str | None, str | None]:
    """(pattern, hash, operation, table) of a statement, computed once per distinct text: apps
    run few distinct (parameterized) statements, and this runs for every database span."""
    normalized = normalize_sql(statement)
    return normalized, query_hash(normalized), query_type(statement), table_name(statement)
