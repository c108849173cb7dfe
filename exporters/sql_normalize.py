"""Query patterns, operation and primary table of SQL statements (pure, stdlib only).

`normalize_sql` turns a statement into a pattern in the spirit of pg_stat_statements: literals
and placeholders become `?`, comments go, keywords are lower-cased and tokens are re-spaced by
fixed rules, so statements that differ only in values, placeholder style, layout or IN-list
length group under one `query_hash`. The pattern never contains a literal, so it is also safe to
show next to errors.

Everything runs once per DB span, so all of it is driven by one compiled tokenizer regex: one
pass for the pattern, and a lazy, early-exiting walk for the operation and the table. Nothing
raises: unbalanced quotes, brackets or comments simply run to the end of the text.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

__all__ = ["MAX_STATEMENT_CHARS", "first_keyword", "normalize_sql", "query_hash", "query_type", "table_name"]

# Only the head of a giant statement (multi-megabyte bulk INSERTs exist) is looked at, so one
# span cannot cost more than a few milliseconds; the head decides the pattern anyway.
MAX_STATEMENT_CHARS = 64 * 1024

# Alternation order matters: strings before words (so E'..' is not the identifier `e`),
# placeholders before numbers and operators (`$1`, `%s`), `::` before `:name` placeholders.
_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
  | (?P<quoted>"[^"]*(?:""[^"]*)*"?|`[^`]*`?)
  | (?P<string>[eE]'[^'\\]*(?:(?:\\.|'')[^'\\]*)*'?
      | (?:[uU]&|[nNbBxX])?'[^']*(?:''[^']*)*'?
      | \$(?P<tag>(?:[^\W\d]\w*)?)\$(?:.*?\$(?P=tag)\$|.*))
  | (?P<param>%(?:\(\w+\))?s|\$\d+|\?|:[^\W\d]\w*)
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<word>[^\W\d][\w$]*)
  | (?P<op>::|->>|\#>>|=>|[<>!=]=|<>|\|\||->|\#>|@>|<@|&&|<<|>>|!?~\*?|[-+*/<>=~!@\#%^&|])
  | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)

# Words after which `(` is a group rather than a call, and `-` is a sign rather than a
# subtraction. Both only shape the pattern's text, so the list need not be complete.
_KEYWORDS = frozenset(
    "all and any as between by case distinct else exists filter from having ilike in is join"
    " lateral like limit not offset on or over returning select set some then using values"
    " when where with".split()
)
_SIGN_AFTER = _KEYWORDS | {"(", ",", "[", ";"}
_OPERATOR_START = frozenset("+-*/<>=~!@#%^&|")
_NO_SPACE_BEFORE = frozenset({",", ")", "]", ".", ";", "["})
_NO_SPACE_AFTER = frozenset({"(", "[", "."})
# Unquoted identifiers fold only ASCII: str.lower() can turn one letter into a letter plus a
# combining mark, which would re-tokenize differently and break idempotence.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

_MAIN_STATEMENTS = frozenset({"select", "insert", "update", "delete", "merge"})
_DDL_MODIFIERS = frozenset({"or", "replace", "temp", "temporary", "unlogged", "global", "local", "foreign"})
_NAME_PREFIXES = frozenset({"only", "table", "if", "not", "exists", "into", "ignore"})


def normalize_sql(statement: str) -> str:
    """The query pattern: `SELECT * FROM t WHERE id IN (1, 2)` -> `select * from t where id in (?)`."""
    if not isinstance(statement, str):
        return ""
    out: list[str] = []
    opens: list[int] = []  # indices in `out` of unclosed `(` / `[`
    first_row_end = -1  # index in `out` of the `)` closing the first VALUES row
    for m in _TOKEN.finditer(statement, 0, MAX_STATEMENT_CHARS):
        kind = m.lastgroup
        if kind == "word":
            tok = m.group()
            out.append(tok.lower() if tok.isascii() else tok.translate(_ASCII_LOWER))
        elif kind == "string" or kind == "number" or kind == "param":
            # `x = -1` and `x = 1` are the same pattern; `a - 1` keeps its operator.
            while out and out[-1] == "-" and (len(out) == 1 or _is_sign_context(out[-2])):
                out.pop()
            out.append("?")
        elif kind == "other":
            tok = m.group()
            if tok == "(" or tok == "[":
                opens.append(len(out))
            elif (tok == ")" or tok == "]") and opens:
                start = opens.pop()
                opener, before = out[start], out[start - 1] if start else ""
                if (before == "in" and opener == "(" and tok == ")") or (
                    before == "array" and opener == "[" and tok == "]"
                ):
                    if _is_literal_list(out, start + 1):
                        del out[start + 2 :]
                elif opener == "(" and tok == ")":
                    if before == "values":
                        first_row_end = len(out)
                    elif before == "," and start - 2 == first_row_end:
                        del out[start - 1 :]  # a further VALUES row: the first one stands for all
                        continue
            out.append(tok)
        elif kind != "ws" and kind != "comment":
            out.append(m.group())
    while out and out[-1] == ";":
        out.pop()
    return _render(out)


def _is_sign_context(prev: str) -> bool:
    return prev in _SIGN_AFTER or prev[0] in _OPERATOR_START


def _is_literal_list(out: list[str], begin: int) -> bool:
    items = out[begin:]
    return len(items) % 2 == 1 and all(t == "?" for t in items[::2]) and all(t == "," for t in items[1::2])


def _render(tokens: list[str]) -> str:
    """Join with spacing that depends on the tokens alone, never on the input's layout, so
    `a=1` and `a = 1` match; glued pairs never re-tokenize differently (idempotence)."""
    parts: list[str] = []
    prev = ""
    for tok in tokens:
        if not prev or tok in _NO_SPACE_BEFORE or prev in _NO_SPACE_AFTER:
            pass
        elif tok == "::" or prev == "::":
            if prev == ":" or tok == ":":  # `:` + `::` glued would read back as `::` + `:`
                parts.append(" ")
        elif tok != "(" or prev in _KEYWORDS or not (prev[0].isalpha() or prev[0] in '_"`'):
            parts.append(" ")  # calls stay tight (`count(*)`), groups are spaced (`in (?)`)
        parts.append(tok)
        prev = tok
    return "".join(parts)


def query_hash(normalized: str) -> str:
    """First 16 hex digits of the SHA-256 of a pattern from `normalize_sql`."""
    text = normalized if isinstance(normalized, str) else ""
    # surrogatepass: lone surrogates (from lossy decoding upstream) must hash, not raise.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def first_keyword(text: str) -> str | None:
    """The first word after leading comments and parentheses, upper-cased; None if there is none."""
    if not isinstance(text, str):
        return None
    word = _leading_word(_significant(text))
    return word.upper() if word else None


def query_type(statement: str) -> str | None:
    """`SELECT`, `INSERT`, ...: the first keyword, except that `WITH` gives the main statement's."""
    if not isinstance(statement, str):
        return None
    tokens = _significant(statement)
    word = _leading_word(tokens)
    if word == "with":
        word = _main_after_ctes(tokens) or word
    return word.upper() if word else None


def table_name(statement: str) -> str | None:
    """The primary table as written (`public.users`, `"Users"` -> `Users`), or None.

    Case is kept as the application wrote it, as OpenTelemetry recommends for
    `db.collection.name`; only the quotes go."""
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
        for kind, text in tokens:
            if kind == "word" and text.lower() == "table":
                return _name(tokens)[0]
            if kind != "word" or text.lower() not in _DDL_MODIFIERS:
                return None  # an index, view, function...: no table of its own
    return None


def _significant(statement: str) -> Iterator[tuple[str, str]]:
    for m in _TOKEN.finditer(statement, 0, MAX_STATEMENT_CHARS):
        kind = m.lastgroup
        if kind != "ws" and kind != "comment":
            yield kind, m.group()


def _leading_word(tokens: Iterator[tuple[str, str]]) -> str | None:
    for kind, text in tokens:
        if text != "(":
            return text.lower() if kind == "word" else None
    return None


def _main_after_ctes(tokens: Iterator[tuple[str, str]]) -> str | None:
    """Consume the CTEs of a WITH; return the main statement's keyword (lower-case)."""
    depth, prev = 0, ""
    for kind, text in tokens:
        if text == "(":
            if depth == 0 and prev == ")":  # `WITH x AS (...) (SELECT ...)`
                return _leading_word(tokens)
            depth += 1
        elif text == ")":
            depth -= 1
        elif depth == 0 and kind == "word" and text.lower() in _MAIN_STATEMENTS:
            return text.lower()
        prev = text
    return None


def _name(tokens: Iterator[tuple[str, str]]) -> tuple[str | None, tuple[str, str] | None]:
    """Read a possibly qualified name, skipping ONLY / IF NOT EXISTS / INTO...; also return the
    token that follows it, which the caller still has to look at."""
    tok = next(tokens, None)
    while tok is not None and tok[0] == "word" and tok[1].lower() in _NAME_PREFIXES:
        tok = next(tokens, None)
    parts: list[str] = []
    while tok is not None and tok[0] in ("word", "quoted"):
        text = tok[1]
        if tok[0] == "quoted":
            quote = text[0]
            text = text[1:-1] if len(text) > 1 and text.endswith(quote) else text[1:]
            text = text.replace(quote * 2, quote)
        parts.append(text)
        tok = next(tokens, None)
        if tok is None or tok[1] != ".":
            break
        tok = next(tokens, None)
    return (".".join(parts) or None), tok


def _from_table(tokens: Iterator[tuple[str, str]]) -> str | None:
    """The table after the first top-level FROM, else after the first FROM in a subquery."""
    depth, fallback = 0, None
    tok = next(tokens, None)
    while tok is not None:
        kind, text = tok
        if text == "(":
            depth += 1
        elif text == ")":
            depth -= 1
        elif kind == "word" and text.lower() == "from":
            name, tok = _name(tokens)
            if name is not None and (tok is None or tok[1] != "("):  # `FROM unnest(...)` is a call
                if depth <= 0:
                    return name
                fallback = fallback or name
            continue  # `tok` is the token after the name and still needs looking at
        tok = next(tokens, None)
    return fallback
