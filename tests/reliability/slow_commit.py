"""Injected COMMIT latency for the fault tests.

The latency sits inside COMMIT itself (a deferred constraint trigger sleeps once per
transaction), i.e. between the write and the point where the rows become durable. The trigger
also logs each transaction's commit time (`clock_timestamp()` after the sleep, the last thing
before the commit), so a test can compare it with the time a sender received its OK.
"""

from __future__ import annotations

import psycopg

SLOW_COMMIT = """
CREATE TABLE fault_commit_latency (delay_s float8 NOT NULL);
INSERT INTO fault_commit_latency VALUES (0);
CREATE TABLE fault_commit_log (endpoint_path text NOT NULL, committed_at timestamptz NOT NULL);
CREATE FUNCTION fault_slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  -- Deferred row triggers run in COMMIT, once per inserted row: sleep and log once per transaction.
  IF current_setting('fault.done', true) IS DISTINCT FROM '1' THEN
    PERFORM set_config('fault.done', '1', true);
    PERFORM pg_sleep(delay_s) FROM fault_commit_latency;
    INSERT INTO fault_commit_log VALUES (NEW.endpoint_path, clock_timestamp());
  END IF;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER fault_slow_commit AFTER INSERT ON api_performance_metrics
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fault_slow_commit();
"""


def install_slow_commit(url: str) -> None:
    """Commits of `api_performance_metrics` rows take `set_commit_latency` seconds (0 at first)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SLOW_COMMIT)


def set_commit_latency(url: str, delay_s: float) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE fault_commit_latency SET delay_s = %s", (delay_s,))
