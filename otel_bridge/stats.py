"""`otel-bridge stats`: one scrape of a running receiver's `GET /metrics`, summed up for a person
(or, with --json, for a script). Under `serve --workers` the answer already sums every process."""

from __future__ import annotations

import json
import math
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from otel_bridge.telemetry import ITEMS, OUTCOMES

QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
REFUSAL_REASONS = ("queue_full", "queue_timeout")


class StatsError(Exception):
    """The receiver could not be scraped; the message says why."""


def metrics_url(target: str, scheme: str = "http") -> str:
    """`HOST:PORT` (a listen address) or a URL -> the URL of `/metrics`. A receiver listening on
    every interface is asked on loopback."""
    if "://" not in target:
        host, _, port = target.rpartition(":")
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(host, host)
        target = f"{scheme}://{host}:{port}"
    if urlsplit(target).path in ("", "/"):
        target = target.rstrip("/") + "/metrics"
    return target


def default_url(environ: Mapping[str, str] = os.environ) -> str:
    """The receiver configured by the same variables: its HTTP address, and https when it serves
    TLS (the certificate is checked against the system's CAs, or SSL_CERT_FILE)."""
    scheme = "https" if environ.get("OTEL_BRIDGE_TLS_CERT_FILE") else "http"
    return metrics_url(environ.get("OTEL_BRIDGE_HTTP_LISTEN") or "127.0.0.1:4318", scheme)


def default_token(environ: Mapping[str, str] = os.environ) -> str | None:
    tokens = [
        t.strip() for t in (environ.get("OTEL_BRIDGE_AUTH_TOKENS") or "").split(",") if t.strip()
    ]
    return tokens[0] if tokens else None


def fetch(url: str, token: str | None, timeout_s: float = 10.0) -> str:
    request = urllib.request.Request(
        url, headers={"authorization": f"Bearer {token}"} if token else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return str(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        hint = " (pass --token or set OTEL_BRIDGE_AUTH_TOKENS)" if exc.code == 401 else ""
        raise StatsError(f"{url} answered HTTP {exc.code}{hint}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise StatsError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' `histogram_quantile`: linear inside the bucket the rank falls in; a rank in the
    +Inf bucket gets the highest finite bound. None without observations."""
    bounds = sorted(buckets.items())
    total = bounds[-1][1] if bounds else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in bounds:
        if count >= rank:
            if math.isinf(upper):
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def summarize(text: str) -> dict[str, Any]:
    """The exposition text -> the numbers `stats` shows (also its --json document)."""
    items = {signal: dict.fromkeys(OUTCOMES, 0) for signal in ITEMS}
    rows: dict[str, int] = {}
    exports: dict[tuple[str, str, str], int] = {}
    buckets: dict[tuple[str, str], dict[float, float]] = {}
    refused = dict.fromkeys(REFUSAL_REASONS, 0)
    gauges: dict[str, float] = {}
    version: str | None = None
    ours = False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            ours = ours or name.startswith("otel_bridge_")
            if name == "otel_bridge_receiver_items_total":
                counts = items.setdefault(labels["signal"], dict.fromkeys(OUTCOMES, 0))
                counts[labels["outcome"]] = counts.get(labels["outcome"], 0) + int(value)
            elif name == "otel_bridge_rows_stored_total":
                rows[labels["table"]] = rows.get(labels["table"], 0) + int(value)
            elif name == "otel_bridge_exports_total":
                key = (labels["signal"], labels["transport"], labels["status"])
                exports[key] = exports.get(key, 0) + int(value)
            elif name == "otel_bridge_export_duration_seconds_bucket":
                series = buckets.setdefault((labels["signal"], labels["transport"]), {})
                series[float(labels["le"])] = series.get(float(labels["le"]), 0.0) + value
            elif name == "otel_bridge_exports_refused_total":
                refused[labels["reason"]] = refused.get(labels["reason"], 0) + int(value)
            elif name == "otel_bridge_build_info":
                version = labels.get("version")
            elif name.startswith("otel_bridge_"):
                gauges[name] = gauges.get(name, 0.0) + value
    if not ours:
        raise StatsError("no otel_bridge_* metrics in the answer: is this an otel-bridge receiver?")
    latency = []
    for (signal, transport), series in sorted(buckets.items()):
        entry: dict[str, Any] = {"signal": signal, "transport": transport,
                                 "count": int(series.get(math.inf, 0))}  # fmt: skip
        entry.update({f"{label}_s": quantile(q, series) for label, q in QUANTILES})
        latency.append(entry)
    return {
        "version": version,
        "items": items,
        "rows": dict(sorted(rows.items())),
        "exports": [
            {"signal": s, "transport": t, "status": status, "count": n}
            for (s, t, status), n in sorted(exports.items())
        ],  # fmt: skip
        "latency": latency,
        "database_errors": int(gauges.get("otel_bridge_database_errors_total", 0)),
        "refused": refused,
        "in_flight": int(gauges.get("otel_bridge_exports_in_flight", 0)),
        "waiting": int(gauges.get("otel_bridge_exports_waiting", 0)),
    }


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _table(header: Sequence[str], body: Sequence[Sequence[Any]], text_columns: int) -> list[str]:
    """Aligned columns: the first `text_columns` to the left, numbers to the right."""
    cells = [list(header)] + [[str(c) for c in row] for row in body]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) if i < text_columns else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
            .rstrip() for row in cells]  # fmt: skip


def format_summary(summary: Mapping[str, Any], url: str) -> str:
    lines = [f"otel-bridge {summary['version'] or '(unknown version)'} at {url}", ""]
    lines += _table(("items", *OUTCOMES),
                    [(signal, *(counts.get(o, 0) for o in OUTCOMES)) for signal, counts in summary["items"].items()],
                    1)  # fmt: skip
    lines.append("")
    if summary["rows"]:
        lines += _table(("rows stored", "rows"), list(summary["rows"].items()), 1)
    else:
        lines.append("rows stored: none yet")
    lines.append("")
    if summary["exports"]:
        lines += _table(("exports", "transport", "status", "count"),
                        [(e["signal"], e["transport"], e["status"], e["count"]) for e in summary["exports"]], 3)  # fmt: skip
        lines.append("")
        lines += _table(("latency", "transport", "exports", *(label for label, _ in QUANTILES)),
                        [(e["signal"], e["transport"], e["count"], *(_duration(e[f"{label}_s"]) for label, _ in QUANTILES))
                         for e in summary["latency"]], 2)  # fmt: skip
    else:
        lines.append("exports: none yet")
    refused = summary["refused"]
    lines += [
        "",
        f"database errors: {summary['database_errors']}",
        f"refused as overloaded: {sum(refused.values())} "
        f"(queue full {refused.get('queue_full', 0)}, queue timeout {refused.get('queue_timeout', 0)})",
        f"exports now: {summary['in_flight']} in flight, {summary['waiting']} waiting",
    ]
    return "\n".join(lines)


def run(url: str | None, token: str | None, as_json: bool, timeout_s: float = 10.0) -> int:
    """`otel-bridge stats`: print the summary; 1 (with the reason on stderr) when scraping fails."""
    target = metrics_url(url) if url else default_url()
    try:
        text = fetch(target, token if token is not None else default_token(), timeout_s)
        summary = summarize(text)
    except StatsError as exc:
        print(f"otel-bridge stats: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # the parser's word for text that is not the Prometheus format
        print(
            f"otel-bridge stats: {target} did not answer Prometheus metrics: {exc}", file=sys.stderr
        )
        return 1
    print(
        json.dumps({"url": target, **summary}, indent=2)
        if as_json
        else format_summary(summary, target)
    )
    return 0
