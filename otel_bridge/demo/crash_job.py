"""The demo's nightly job that really crashes: `configure()`, a few breadcrumbs and queries, then
an exception nobody catches. The process dies; its crash report (with the trail of what it did)
reaches the receiver before it does.

    python -m otel_bridge.demo.crash_job --database-url postgresql://...
"""

from __future__ import annotations

import argparse

SERVICE = "cqms-worker"


def recalculate_scores(database_url: str) -> None:
    import psycopg

    from otel_bridge.instrumentation.breadcrumbs import breadcrumb

    breadcrumb("nightly score recalculation started", category="job")
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT id, criteria FROM audits ORDER BY id").fetchall()
        breadcrumb(f"loaded {len(rows)} audits", category="job")
        for audit_id, criteria in rows:
            # The same bug as the API's: an audit without criteria.
            conn.execute("UPDATE audits SET score = %s WHERE id = %s", (sum(criteria) * 20 / len(criteria), audit_id))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m otel_bridge.demo.crash_job",
                                     description="A job that crashes, to show otel-bridge's crash reports.")  # fmt: skip
    parser.add_argument("--database-url", required=True, help="PostgreSQL URL of the demo app's database")
    args = parser.parse_args(argv)

    from otel_bridge.demo.cqms_app import VERSION
    from otel_bridge.instrumentation import configure

    configure(SERVICE, service_version=VERSION, environment="demo")
    recalculate_scores(args.database_url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
