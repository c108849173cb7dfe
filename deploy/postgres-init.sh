#!/bin/sh
# Creates the login roles of the Compose stack. The postgres image runs the files in
# /docker-entrypoint-initdb.d once, when it initialises an EMPTY data volume, as POSTGRES_USER
# (the database owner, who also runs `otel-bridge migrate`). Changing a password later takes
# `ALTER ROLE ... PASSWORD` (or a fresh volume): this script does not run again.
#
#   otel_bridge_ingest  the receiver's login; `otel-bridge roles --grant-to` makes it a member of
#                       otel_bridge_writer (rows in, no DDL)
#   grafana             Grafana's login; member of otel_bridge_reader (no PII columns)
#
# A shell script, not .sql: the passwords come from the environment. psql's :'name' quotes them as
# SQL literals. The file must stay executable (a non-executable .sh would be sourced into the
# image's entrypoint instead of run).
set -eu

: "${OTEL_BRIDGE_INGEST_DB_PASSWORD:?set OTEL_BRIDGE_INGEST_DB_PASSWORD}"
: "${OTEL_BRIDGE_GRAFANA_DB_PASSWORD:?set OTEL_BRIDGE_GRAFANA_DB_PASSWORD}"

psql --no-psqlrc -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v ingest_password="$OTEL_BRIDGE_INGEST_DB_PASSWORD" \
  -v grafana_password="$OTEL_BRIDGE_GRAFANA_DB_PASSWORD" <<'SQL'
CREATE ROLE otel_bridge_ingest LOGIN PASSWORD :'ingest_password';
CREATE ROLE grafana LOGIN PASSWORD :'grafana_password';
SQL
