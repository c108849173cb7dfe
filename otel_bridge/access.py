"""Database roles (`otel-bridge roles --create`): who may read and write which rows and columns.

Four NOLOGIN group roles; an operator grants them to login roles (`--grant-to grafana reader`):

- `otel_bridge_writer`, the receiver: SELECT/INSERT/UPDATE/DELETE on the tables it writes
  (`audit_log` append-only, `alembic_version` read-only), sequences, TEMP (its COPY staging
  tables), EXECUTE on the partition functions. No DDL: it owns nothing and has no CREATE
  on the schema, so its startup `migrate` works only when the database is already at head
  (migrate as the owner, then re-run this command).
- `otel_bridge_reader`, Grafana: SELECT on every table and view, except the PII columns
  (`PII_COLUMNS`): tables that have one get column-level grants, so `SELECT *` fails on them
  and queries name their columns. Views that read a PII column are not granted.
- `otel_bridge_admin`: every privilege on the tables; member of writer and reader.
- `otel_bridge_user`: the reader's columns of the tables with a `user_id`, and row-level
  security: a session that ran `SET otel_bridge.user_id = 'u-1'` sees u-1's rows only, and no
  rows without it. Any session may set that variable: the role is for a trusted application that
  sets it for its signed-in user, never for people with their own SQL access. Enabling RLS hides
  rows from every non-owner role without BYPASSRLS, so the other three roles get an all-rows
  policy; the owner (who runs migrations) is not affected (RLS is not FORCEd).

Partitioned tables are read and written through their parents: PostgreSQL checks the parent's
privileges and policies only, so monthly partitions created later need nothing for the reader
and the user role, who get no privilege on partitions themselves (querying one directly is
refused: partitions have no policies). The writer and the admin may use partitions directly
(maintenance deletes in them), and default privileges give them the tables the owner creates
later. The partition functions become SECURITY DEFINER (with a fixed search_path) so that the
writer can create partitions; detaching and dropping old ones (retention) still needs the owner.

The grants are computed from the live catalog (tables, columns, views), so re-run the command
after a migration. Every statement is idempotent: the command revokes what the roles had on the
schema's tables and grants the desired set in one transaction, and replaces its policies.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

WRITER = "otel_bridge_writer"
READER = "otel_bridge_reader"
ADMIN = "otel_bridge_admin"
USER = "otel_bridge_user"
ROLES = (WRITER, READER, ADMIN, USER)
SHORT_NAMES = {"writer": WRITER, "reader": READER, "admin": ADMIN, "user": USER}

# Columns the reader and the user role never see: (hashed) client IPs, request/response bodies and
# headers, error contexts. Matched by name in every table.
PII_COLUMNS = ("ip_address", "request_body", "request_headers", "response_body", "context")
USER_SETTING = "otel_bridge.user_id"
OWN_ROWS_POLICY = "otel_bridge_own_rows"
ALL_ROWS_POLICY = "otel_bridge_all_rows"
# They create partitions (DDL on tables the owner owns): SECURITY DEFINER lets the writer call them.
PARTITION_FUNCTIONS = ("otel_bridge_ensure_partitions(integer)", "otel_bridge_partition_month(text, date)",
                       "otel_bridge_drop_partition(text, text)")
# Tables the writer may not change freely: the audit trail is append-only, migrations are DDL.
WRITER_LIMITS = {"audit_log": "SELECT, INSERT", "alembic_version": "SELECT"}
LOCK_TIMEOUT = "10s"  # ENABLE RLS and CREATE POLICY wait for an exclusive lock on each table

_RELATIONS = """
SELECT c.relname, c.relkind, c.relispartition, array_agg(a.attname::text ORDER BY a.attnum)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm')
GROUP BY c.oid ORDER BY c.relname
"""
# Which table columns each view reads (its rewrite rule's dependencies).
_VIEW_COLUMNS = """
SELECT DISTINCT v.relname, a.attname::text
FROM pg_class v
JOIN pg_namespace n ON n.oid = v.relnamespace
JOIN pg_rewrite r ON r.ev_class = v.oid
JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
  AND d.refclassid = 'pg_class'::regclass AND d.refobjsubid > 0 AND d.refobjid <> v.oid
JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE n.nspname = current_schema() AND v.relkind IN ('v', 'm')
"""


class AccessError(RuntimeError):
    pass


@dataclass
class Catalog:
    database: str
    schema: str
    tables: dict[str, list[str]] = field(default_factory=dict)  # plain and partitioned parents
    views: dict[str, list[str]] = field(default_factory=dict)
    partitions: list[str] = field(default_factory=list)
    view_pii: dict[str, list[str]] = field(default_factory=dict)  # view -> PII columns it reads
    partition_functions: list[str] = field(default_factory=list)
    existing_roles: set[str] = field(default_factory=set)

    def pii(self, table: str) -> list[str]:
        return [c for c in self.tables[table] if c in PII_COLUMNS]

    def user_tables(self) -> list[str]:
        return [t for t, columns in self.tables.items() if "user_id" in columns]


def read_catalog(conn: Any) -> Catalog:
    database, schema = conn.execute("SELECT current_database(), current_schema()").fetchone()
    if schema is None:
        raise AccessError("no current schema: check search_path")
    catalog = Catalog(database, schema)
    for name, kind, is_partition, columns in conn.execute(_RELATIONS).fetchall():
        if is_partition:
            catalog.partitions.append(name)
        elif kind in ("v", "m"):
            catalog.views[name] = list(columns)
        else:
            catalog.tables[name] = list(columns)
    for view, column in conn.execute(_VIEW_COLUMNS).fetchall():
        if column in PII_COLUMNS:
            catalog.view_pii.setdefault(view, []).append(column)
    catalog.partition_functions = [
        f for f in PARTITION_FUNCTIONS if conn.execute("SELECT to_regprocedure(%s)", (f,)).fetchone()[0]
    ]
    catalog.existing_roles = {
        r for (r,) in conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(ROLES),))
    }
    if not catalog.tables:
        raise AccessError(f"no tables in schema {schema!r}: run `otel-bridge migrate` first")
    return catalog


def plan(catalog: Catalog, grant_to: Sequence[tuple[str, str]] = ()) -> tuple[list[Any], list[str]]:
    """The statements (psycopg `sql` objects, in order) and a human summary of what they do."""
    from psycopg import sql

    ident, lit = sql.Identifier, sql.Literal

    def names(items: list[str]) -> Any:
        return sql.SQL(", ").join(ident(i) for i in items)

    schema, tables = ident(catalog.schema), sorted(catalog.tables)
    views = sorted(catalog.views)
    roles = names(list(ROLES))
    statements: list[Any] = [sql.SQL("SET LOCAL lock_timeout = {}").format(lit(LOCK_TIMEOUT))]
    for role in ROLES:
        statements.append(sql.SQL(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {}) THEN "
            "CREATE ROLE {} NOLOGIN; END IF; END $$"
        ).format(lit(role), ident(role)))  # fmt: skip
    statements += [
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(ident(catalog.database), roles),
        sql.SQL("GRANT TEMPORARY ON DATABASE {} TO {}, {}").format(ident(catalog.database), ident(WRITER), ident(ADMIN)),
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, roles),
        sql.SQL("GRANT {}, {} TO {}").format(ident(WRITER), ident(READER), ident(ADMIN)),
        # From here on the desired state: whatever the roles had on these relations goes first
        # (table-level REVOKE also takes back column grants).
        sql.SQL("REVOKE ALL ON TABLE {} FROM {}").format(names(tables + views), roles),
    ]  # fmt: skip
    if catalog.partitions:
        # Maintenance (`otel-bridge maintain`, also run by `serve`) reads and deletes in partitions
        # directly; the reader and the user role must not (no policies there).
        parts = names(catalog.partitions)
        statements += [
            sql.SQL("REVOKE ALL ON TABLE {} FROM {}").format(parts, roles),
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE {} TO {}").format(parts, ident(WRITER)),
            sql.SQL("GRANT ALL ON TABLE {} TO {}").format(parts, ident(ADMIN)),
        ]
    # Tables the owner creates later (partitions, migrations' tables) are the writer's and the
    # admin's at once; the reader and the user role wait for the next run (PII columns).
    statements += [
        sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {}").format(
            schema, ident(WRITER)),
        sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT ALL ON TABLES TO {}").format(schema, ident(ADMIN)),
        sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT USAGE, SELECT ON SEQUENCES TO {}").format(
            schema, ident(WRITER)),
        sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT ALL ON SEQUENCES TO {}").format(schema, ident(ADMIN)),
    ]  # fmt: skip

    # The writer.
    plain = [t for t in tables if t not in WRITER_LIMITS]
    statements.append(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE {} TO {}").format(names(plain), ident(WRITER)))
    for table, privileges in WRITER_LIMITS.items():
        if table in catalog.tables:
            statements.append(sql.SQL("GRANT {} ON TABLE {} TO {}").format(sql.SQL(privileges), ident(table), ident(WRITER)))
    statements.append(sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(schema, ident(WRITER)))
    for signature in catalog.partition_functions:
        function = sql.SQL(signature)
        statements += [
            # Runs as its owner, who owns the parents (CREATE TABLE ... PARTITION OF needs that);
            # a fixed search_path keeps a caller's objects out of it.
            sql.SQL("ALTER FUNCTION {} SECURITY DEFINER SET search_path = {}, pg_temp").format(function, schema),
            sql.SQL("REVOKE ALL ON FUNCTION {} FROM PUBLIC").format(function),
            sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}, {}").format(function, ident(WRITER), ident(ADMIN)),
        ]  # fmt: skip

    # The reader: whole tables without PII, the other columns of the rest, views without PII.
    readable = [t for t in tables if t != "alembic_version"]
    whole = [t for t in readable if not catalog.pii(t)]
    safe_views = [v for v in views if v not in catalog.view_pii]
    statements.append(sql.SQL("GRANT SELECT ON TABLE {} TO {}").format(names(whole + safe_views), ident(READER)))

    def column_grants(table: str, role: str) -> Any:
        allowed = [c for c in catalog.tables[table] if c not in PII_COLUMNS]
        return sql.SQL("GRANT SELECT ({}) ON TABLE {} TO {}").format(names(allowed), ident(table), ident(role))

    statements += [column_grants(t, READER) for t in readable if catalog.pii(t)]

    # The admin.
    statements += [
        sql.SQL("GRANT ALL ON TABLE {} TO {}").format(names(tables + views), ident(ADMIN)),
        sql.SQL("GRANT ALL ON ALL SEQUENCES IN SCHEMA {} TO {}").format(schema, ident(ADMIN)),
    ]  # fmt: skip

    # The user role and row-level security.
    user_tables = catalog.user_tables()
    everyone = names([WRITER, READER, ADMIN])
    own_rows = sql.SQL("user_id = nullif(current_setting({}, true), '')").format(lit(USER_SETTING))
    for table in user_tables:
        t = ident(table)
        statements += [
            column_grants(table, USER),
            sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(t),
            sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(ident(OWN_ROWS_POLICY), t),
            sql.SQL("CREATE POLICY {} ON {} FOR SELECT TO {} USING ({})").format(ident(OWN_ROWS_POLICY), t, ident(USER), own_rows),
            sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(ident(ALL_ROWS_POLICY), t),
            sql.SQL("CREATE POLICY {} ON {} FOR ALL TO {} USING (true) WITH CHECK (true)").format(ident(ALL_ROWS_POLICY), t, everyone),
        ]  # fmt: skip

    for login, role in grant_to:
        statements.append(sql.SQL("GRANT {} TO {}").format(ident(role), ident(login)))

    created = [r for r in ROLES if r not in catalog.existing_roles]
    withheld = [f"{t} ({', '.join(catalog.pii(t))})" for t in readable if catalog.pii(t)]
    summary = [
        f"roles: created {', '.join(created)}" if created else "roles: all four existed already",
        f"{WRITER}: SELECT, INSERT, UPDATE, DELETE on {len(plain)} tables and on tables the owner creates later ("
        + "; ".join(f"{t}: {p}" for t, p in WRITER_LIMITS.items() if t in catalog.tables)
        + " only); sequences; TEMP"
        + "".join(f"; EXECUTE {f}" for f in catalog.partition_functions)
        + (" (SECURITY DEFINER now)" if catalog.partition_functions else "")
        + "; no DDL",
        f"{READER}: SELECT on {len(whole)} tables and {len(safe_views)} view(s); other columns only of "
        + (", ".join(withheld) or "none") + " (SELECT * is refused there: name the columns)",
        f"{ADMIN}: ALL on {len(tables)} tables and {len(views)} view(s); member of {WRITER}, {READER}",
        f"{USER}: own rows only (SET {USER_SETTING} = '...'), reader's columns, in {len(user_tables)} tables: "
        + ", ".join(user_tables),
        f"row-level security enabled on those {len(user_tables)} tables ({ALL_ROWS_POLICY} for "
        f"{WRITER}, {READER}, {ADMIN}; {OWN_ROWS_POLICY} for {USER})",
    ]  # fmt: skip
    if catalog.partitions:
        summary.append(f"partitions ({len(catalog.partitions)}): direct access for {WRITER} and {ADMIN} only "
                       "(maintenance); the others read through the parents")
    for view, columns in sorted(catalog.view_pii.items()):
        summary.append(f"view {view} not granted to {READER}: it reads {', '.join(sorted(set(columns)))}")
    summary += [f"granted {role} to {login}" for login, role in grant_to]
    return statements, summary


def _grant_targets(conn: Any, grant_to: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    resolved = []
    for login, role in grant_to:
        full = SHORT_NAMES.get(role, role)
        if full not in ROLES:
            raise AccessError(f"--grant-to: unknown role {role!r} (one of {', '.join(SHORT_NAMES)})")
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (login,)).fetchone():
            raise AccessError(f"--grant-to: role {login!r} does not exist (CREATE ROLE {login} LOGIN first)")
        resolved.append((login, full))
    return resolved


def create_roles(url: str, by: str, grant_to: Sequence[tuple[str, str]] = (), *,
                 print_only: bool = False) -> list[str]:  # fmt: skip
    """Create or bring up to date the roles, grants and policies in one transaction (with an
    audit_log row); with `print_only`, return the SQL script instead and change nothing."""
    import psycopg
    from psycopg.types.json import Jsonb

    with psycopg.connect(url) as conn:
        catalog = read_catalog(conn)
        targets = _grant_targets(conn, grant_to) if not print_only else [
            (login, SHORT_NAMES.get(role, role)) for login, role in grant_to]  # fmt: skip
        statements, summary = plan(catalog, targets)
        if print_only:
            conn.rollback()
            return ["BEGIN;", *(s.as_string(conn) + ";" for s in statements), "COMMIT;"]
        for statement in statements:
            conn.execute(statement)
        details = {
            "created_roles": [r for r in ROLES if r not in catalog.existing_roles],
            "schema": catalog.schema,
            "tables": len(catalog.tables),
            "pii_columns_withheld": {t: catalog.pii(t) for t in catalog.tables if catalog.pii(t)},
            "row_level_security": catalog.user_tables(),
            "views_not_granted": sorted(catalog.view_pii),
            "granted_to": [f"{role} -> {login}" for login, role in targets],
            "statements": len(statements),
        }
        conn.execute("INSERT INTO audit_log (actor, action, target, details) VALUES (%s, 'roles.create', %s, %s)",
                     (by, f"database {catalog.database}", Jsonb(details)))  # fmt: skip
        # PostgreSQL 14 and older let PUBLIC create objects in the public schema.
        if conn.execute("SELECT has_schema_privilege(%s, current_schema(), 'CREATE')", (WRITER,)).fetchone()[0]:
            summary.append(f"WARNING: {WRITER} can CREATE in schema {catalog.schema} (through PUBLIC?): "
                           f"REVOKE CREATE ON SCHEMA {catalog.schema} FROM PUBLIC")  # fmt: skip
    summary.append(f"audit_log: roles.create by {by}")
    return summary


def show_roles(url: str) -> list[str]:
    """What exists now: the roles, who is a member, which tables have row-level security."""
    import psycopg

    with psycopg.connect(url) as conn:
        members = dict(conn.execute(
            "SELECT r.rolname, coalesce(string_agg(m.rolname, ', ' ORDER BY m.rolname), '') FROM pg_roles r "
            "LEFT JOIN pg_auth_members am ON am.roleid = r.oid LEFT JOIN pg_roles m ON m.oid = am.member "
            "WHERE r.rolname = ANY(%s) GROUP BY r.rolname", (list(ROLES),)).fetchall())  # fmt: skip
        rls = [t for (t,) in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relrowsecurity ORDER BY 1").fetchall()]  # fmt: skip
    lines = [f"{role}: " + (f"members: {members[role] or '-'}" if role in members else "missing") for role in ROLES]
    lines.append("row-level security: " + (", ".join(rls) or "none"))
    if len(members) < len(ROLES):
        lines.append("create them with: otel-bridge roles --create")
    return lines


def run(args: argparse.Namespace) -> int:
    """`otel-bridge roles`: exit 0 when done, 1 when the database refused."""
    import psycopg

    from otel_bridge.config import Config
    from otel_bridge.database import resolve_database

    if args.print and not args.create:
        print("otel-bridge roles: --print goes with --create", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    overrides = {k: v for k, v in (("database_url", args.database_url), ("data_dir", args.data_dir)) if v is not None}
    url, embedded = resolve_database(Config.from_env(**overrides))
    try:
        if args.create:
            print("\n".join(create_roles(url, args.by, args.grant_to or [], print_only=args.print)))
        else:
            print("\n".join(show_roles(url)))
        return 0
    except AccessError as exc:
        print(f"otel-bridge roles: {exc}", file=sys.stderr)
        return 1
    except psycopg.errors.InsufficientPrivilege as exc:
        print(f"otel-bridge roles: {exc}".rstrip() + "\n(run it as the tables' owner with CREATEROLE, "
              "e.g. the user that runs `otel-bridge migrate`)", file=sys.stderr)  # fmt: skip
        return 1
    finally:
        if embedded is not None:
            embedded.stop()


def add_roles_command(commands: Any, add_database_flags: Callable[[argparse.ArgumentParser], None],
                      env_help: str) -> None:  # fmt: skip
    """Register `otel-bridge roles` on the CLI's subparsers."""
    roles = commands.add_parser(
        "roles", help="database roles: writer (receiver), reader (Grafana, no PII columns), admin, "
        "user (row-level security)",
        description=f"Without flags: show the roles and their members. With --create: create (or bring up "
        f"to date) {', '.join(ROLES)}, their grants and row-level security policies, in one transaction "
        "recorded in audit_log. Run it as the tables' owner, again after every migration. Roles are "
        "NOLOGIN: grant them to login roles (--grant-to).", epilog=env_help,
    )  # fmt: skip
    roles.add_argument("--create", action="store_true", help="create the roles, grants and policies (idempotent)")
    roles.add_argument("--print", action="store_true", help="with --create: print the SQL instead of running it")
    roles.add_argument("--grant-to", nargs=2, action="append", metavar=("LOGIN", "ROLE"),
                       help="also grant ROLE (writer, reader, admin, user or its full name) to the existing "
                       "role LOGIN; repeatable")  # fmt: skip
    roles.add_argument("--by", default=getpass.getuser(), help="who does it (written to audit_log)")
    add_database_flags(roles)
    roles.set_defaults(run=run)


def main(argv: list[str] | None = None) -> int:
    """`python -m otel_bridge.access [--create ...]`, the same as `otel-bridge roles`."""
    from otel_bridge.cli import ENV_HELP, _add_database_flags
    from otel_bridge.config import ConfigError

    parser = argparse.ArgumentParser(prog="otel-bridge")
    add_roles_command(parser.add_subparsers(dest="command", required=True), _add_database_flags, ENV_HELP)
    args = parser.parse_args(["roles", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"otel-bridge: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
