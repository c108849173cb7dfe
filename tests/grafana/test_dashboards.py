"""Every dashboard panel's SQL and every alert rule's query, with Grafana's PostgreSQL macros and
the dashboard variables expanded the way Grafana expands them, runs as `otel_bridge_reader`
against a database the demo filled through the receiver, and returns what the panel expects:
rows, a sorted `time` column for time series, no column that is NULL throughout. Plus the
dashboards' structure: unique panel ids, the provisioned data source uid, every variable used is
defined."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2] / "grafana"
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
ALERT_FILES = sorted((ROOT / "provisioning" / "alerting").glob("*.yaml"))
DATASOURCE_UID = "otel-bridge-pg"
TO = datetime.now(timezone.utc) + timedelta(minutes=5)
FROM = TO - timedelta(days=2)
INTERVAL_S = 300
BUILTIN = {"__interval", "__interval_ms", "__from", "__to", "__timeFilter", "__timeFrom", "__timeTo", "__all",
           "__dashboard", "__org", "__user", "__range", "__rate_interval", "__name", "__searchFilter"}  # fmt: skip
_VAR = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)|\[\[(\w+)\]\]")


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for panel in panels:
        out.append(panel)
        out += _panels(panel.get("panels", []))  # rows hold their collapsed panels
    return out


def dashboard_targets() -> list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]]:
    found = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in _panels(board.get("panels", [])):
            for target in panel.get("targets", []):
                if target.get("rawSql"):
                    found.append((path.stem, board, panel, target))
    return found


def alert_queries() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in ALERT_FILES:
        for group in yaml.safe_load(path.read_text()).get("groups", []):
            for rule in group.get("rules", []):
                for query in rule.get("data", []):
                    if query.get("datasourceUid") == DATASOURCE_UID:
                        found.append((rule["title"], query))
    return found


def _seconds(interval: str) -> int:
    number, unit = re.fullmatch(r"'?(\d+)([smhd])'?", interval.strip()).groups()  # type: ignore[union-attr]
    return int(number) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def expand_macros(text: str) -> str:
    """Grafana's PostgreSQL macros (pkg/tsdb/grafana-postgresql-datasource/macros.go)."""
    start, end = FROM.isoformat().replace("+00:00", "Z"), TO.isoformat().replace("+00:00", "Z")

    def group(m: re.Match[str], alias: bool) -> str:
        args = [a.strip() for a in m.group(1).split(",")]
        seconds = INTERVAL_S if args[1] in ("$__interval", "'$__interval'") else _seconds(args[1])
        expr = f"floor(extract(epoch from {args[0]})/{seconds})*{seconds}"
        return expr + (' AS "time"' if alias else "")

    text = re.sub(r"\$__timeGroupAlias\(([^()]*)\)", lambda m: group(m, True), text)
    text = re.sub(r"\$__timeGroup\(([^()]*)\)", lambda m: group(m, False), text)
    text = re.sub(r"\$__timeFilter\(([^()]*)\)", lambda m: f"{m.group(1)} BETWEEN '{start}' AND '{end}'", text)
    text = re.sub(r"\$__time\(([^()]*)\)", lambda m: f'{m.group(1)} AS "time"', text)
    text = re.sub(r"\$__timeEpoch\(([^()]*)\)", lambda m: f'extract(epoch from {m.group(1)}) as "time"', text)
    text = text.replace("$__timeFrom()", f"'{start}'").replace("$__timeTo()", f"'{end}'")
    text = text.replace("$__unixEpochFrom()", str(int(FROM.timestamp()))).replace("$__unixEpochTo()", str(int(TO.timestamp())))
    text = text.replace("$__interval_ms", str(INTERVAL_S * 1000)).replace("$__interval", f"{INTERVAL_S}s")
    return text


def expand_variables(text: str, values: dict[str, list[str]]) -> str:
    """Multi-value variables with "All" selected: Grafana quotes each value and joins them."""

    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3) or m.group(4)
        if name not in values:
            return m.group(0)
        quoted = ",".join("'" + v.replace("'", "''") + "'" for v in values[name])
        return ",".join(values[name]) if m.group(2) == "csv" else (quoted or "''")

    return _VAR.sub(value, text)


def variable_values(board: dict[str, Any], connect: Any) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"] if isinstance(variable["query"], str) else variable["query"].get("rawSql", "")
            with connect() as conn:
                rows = conn.execute(expand_variables(expand_macros(query), values)).fetchall()
            values[variable["name"]] = [str(r[0]) for r in rows]
        elif variable.get("type") in ("custom", "constant", "textbox", "interval"):
            values[variable["name"]] = [o["value"] for o in variable.get("options", [])] or [str(variable.get("query", ""))]
    return values


@pytest.mark.parametrize("board_name, board, panel, target", dashboard_targets(),
                         ids=[f"{b}:{p.get('title')}:{t.get('refId')}" for b, _, p, t in dashboard_targets()])  # fmt: skip
def test_every_panel_query_runs_as_the_reader_and_returns_data(board_name: str, board: dict[str, Any],
                                                              panel: dict[str, Any], target: dict[str, Any],
                                                              as_reader: Any) -> None:  # fmt: skip
    values = variable_values(board, as_reader)
    for name, found in values.items():
        assert found, f"variable {name} has no values"
    query = expand_variables(expand_macros(target["rawSql"]), values)
    assert "$" not in re.sub(r"\$\d+|'[^']*'|\"[^\"]*\"", "", query), f"unexpanded macro or variable in {query}"
    with as_reader() as conn:
        cursor = conn.execute(query)
        columns = [c.name for c in cursor.description or []]
        rows = cursor.fetchall()
    assert rows, f"{panel.get('title')}: no rows\n{query}"
    for i, column in enumerate(columns):
        assert any(r[i] is not None for r in rows), f"{panel.get('title')}: column {column} is NULL throughout"
    if target.get("format") == "time_series":
        assert "time" in columns, f"{panel.get('title')}: a time series needs a `time` column"
        times = [r[columns.index("time")] for r in rows]
        assert times == sorted(times), f"{panel.get('title')}: time series must be sorted by time"


@pytest.mark.parametrize("title, query", alert_queries(), ids=[t for t, _ in alert_queries()])
def test_every_alert_query_runs_as_the_reader(title: str, query: dict[str, Any], as_reader: Any) -> None:
    sql = expand_macros(query["model"]["rawSql"])
    with as_reader() as conn:
        cursor = conn.execute(sql)
        columns = [c.name for c in cursor.description or []]
        cursor.fetchall()
    assert "time" in columns or query["model"].get("format") == "table", f"{title}: alerting needs time series"


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_dashboard_structure(path: Path) -> None:
    board = json.loads(path.read_text())
    panels = _panels(board["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    defined = {v["name"] for v in board.get("templating", {}).get("list", [])}
    text = json.dumps(board)
    for uid in re.findall(r'"uid":\s*"([^"]+)"', json.dumps([p.get("datasource") for p in panels])):
        assert uid == DATASOURCE_UID
    for target in (t for p in panels for t in p.get("targets", [])):
        assert target.get("datasource", {}).get("uid", DATASOURCE_UID) == DATASOURCE_UID
    used = {m.group(1) or m.group(3) or m.group(4) for m in _VAR.finditer(text)}
    assert not {u for u in used if u and not u.startswith("__") and u not in BUILTIN} - defined
    assert board.get("uid") and board.get("title")


def test_there_are_three_dashboards_and_alert_rules() -> None:
    assert {p.stem for p in DASHBOARDS} >= {"user-analytics", "performance", "errors"}
    assert len(alert_queries()) >= 5
