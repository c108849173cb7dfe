"""Error alerts to `OTEL_BRIDGE_ALERT_WEBHOOK_URL`, off the ingest path.

The ingest transaction only queues alerts (new group, regression) in the `error_alerts` outbox;
this task, running beside the receiver, also finds spikes (occurrences in the last 5 minutes over
`OTEL_BRIDGE_ALERT_SPIKE_FACTOR` times the hour's 5-minute average, at least
`OTEL_BRIDGE_ALERT_SPIKE_MIN_EVENTS`, at most one per group per hour) and POSTs each alert as JSON
(Slack-compatible `text` plus the structured fields). A failed POST is retried with exponential
backoff (up to `MAX_ATTEMPTS`), deliveries are rate-limited, and `FOR UPDATE SKIP LOCKED` lets
several receivers share one outbox without sending anything twice. Nothing here can block or fail
an Export: the webhook being slow or down only delays alerts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from otel_bridge.exporters.error_groups import alert_payload

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 10
MAX_BACKOFF_S = 600
POST_TIMEOUT_S = 5.0

_PENDING = """
SELECT id, kind, fingerprint, payload, attempts FROM error_alerts
WHERE delivered_at IS NULL AND next_attempt_at <= now() ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED
"""
_DELIVERED = "UPDATE error_alerts SET delivered_at = now(), attempts = attempts + 1 WHERE id = %s"
_FAILED = """
UPDATE error_alerts SET attempts = attempts + 1, last_error = %s,
  next_attempt_at = CASE WHEN attempts + 1 >= %s THEN 'infinity' ELSE now() + make_interval(secs => %s) END
WHERE id = %s
"""
# Occurrences per group in the last 5 minutes and in the hour before; groups that alerted on a
# spike within the hour are skipped (the rate limit per group).
_SPIKES = """
WITH recent AS (
  SELECT fingerprint, at FROM (
    SELECT fingerprint, error_timestamp AS at FROM error_logs WHERE error_timestamp >= now() - interval '65 minutes'
    UNION ALL
    SELECT fingerprint, crash_timestamp FROM crash_reports WHERE crash_timestamp >= now() - interval '65 minutes'
  ) o WHERE fingerprint IS NOT NULL
), counted AS (
  SELECT fingerprint, count(*) FILTER (WHERE at >= now() - interval '5 minutes') AS last_5m,
         count(*) FILTER (WHERE at < now() - interval '5 minutes') AS hour_before
  FROM recent GROUP BY fingerprint
)
SELECT g.fingerprint, g.title, g.error_type, g.service_name, g.occurrences, g.users_affected, g.first_seen,
       g.last_seen, g.last_release, c.last_5m, c.hour_before
FROM counted c JOIN error_groups g USING (fingerprint)
WHERE g.status <> 'ignored' AND c.last_5m >= %(min)s AND c.last_5m > %(factor)s * (c.hour_before / 12.0)
  AND (g.last_spike_at IS NULL OR g.last_spike_at < now() - interval '1 hour')
FOR UPDATE OF g SKIP LOCKED
"""


@dataclass(frozen=True)
class NotifierSettings:
    webhook_url: str
    spike_factor: float = 10.0
    spike_min_events: int = 10
    max_per_minute: int = 30
    poll_interval_s: float = 1.0
    spike_interval_s: float = 30.0


def post_json(url: str, payload: dict[str, Any], timeout_s: float = POST_TIMEOUT_S) -> None:
    """POST; raises on a connection error or a non-2xx answer."""
    request = urllib.request.Request(url, data=json.dumps(payload, default=str).encode(), method="POST",
                                     headers={"content-type": "application/json", "user-agent": "otel-bridge"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - an operator-set URL
        if not 200 <= response.status < 300:
            raise urllib.error.HTTPError(url, response.status, "webhook refused the alert", response.headers, None)


class AlertNotifier:
    def __init__(self, settings: NotifierSettings, database_url: str) -> None:
        self.settings = settings
        self._url = database_url
        self._task: asyncio.Task[None] | None = None
        self._sent: list[float] = []  # delivery times within the last minute (the rate limit)
        self._last_spike_check = 0.0
        self.delivered = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="alert-notifier")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                if time.monotonic() - self._last_spike_check >= self.settings.spike_interval_s:
                    self._last_spike_check = time.monotonic()
                    await self.find_spikes()
                await self.deliver()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database may be down; alerts wait
                log.warning("alert notifier: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(self.settings.poll_interval_s)

    async def find_spikes(self) -> int:
        params = {"min": self.settings.spike_min_events, "factor": self.settings.spike_factor}
        async with await psycopg.AsyncConnection.connect(self._url, connect_timeout=5) as conn:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.execute(_SPIKES, params)
                spikes = await cur.fetchall()
                for fp, title, error_type, service, occurrences, users, first, last, release, last_5m, hour in spikes:
                    group = {"fingerprint": fp, "title": title, "error_type": error_type, "service_name": service,
                             "occurrences": occurrences, "users_affected": users, "first_seen": first,
                             "last_seen": last, "last_release": release, "last_5_minutes": last_5m,
                             "previous_hour": hour}  # fmt: skip
                    await cur.execute("INSERT INTO error_alerts (kind, fingerprint, payload) VALUES ('spike', %s, %s)",
                                      (fp, Jsonb(alert_payload("spike", group))))  # fmt: skip
                    await cur.execute("UPDATE error_groups SET last_spike_at = now() WHERE fingerprint = %s", (fp,))
        if spikes:
            log.info("queued %d error spike alert(s)", len(spikes))
        return len(spikes)

    def _budget(self) -> int:
        now = time.monotonic()
        self._sent = [t for t in self._sent if now - t < 60]
        return self.settings.max_per_minute - len(self._sent)

    async def deliver(self) -> int:
        budget = self._budget()
        if budget <= 0:
            return 0
        sent = 0
        async with await psycopg.AsyncConnection.connect(self._url, connect_timeout=5) as conn:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.execute(_PENDING, (budget,))
                for alert_id, kind, fingerprint, payload, attempts in await cur.fetchall():
                    try:
                        await asyncio.to_thread(post_json, self.settings.webhook_url, payload)
                    except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
                        delay = min(MAX_BACKOFF_S, 2 ** (attempts + 1))
                        await cur.execute(_FAILED, (f"{type(exc).__name__}: {exc}"[:500], MAX_ATTEMPTS, delay, alert_id))
                        log.warning("alert %s for %s not delivered (attempt %d): %s", kind, fingerprint,
                                    attempts + 1, type(exc).__name__)  # fmt: skip
                        continue
                    await cur.execute(_DELIVERED, (alert_id,))
                    self._sent.append(time.monotonic())
                    sent += 1
        self.delivered += sent
        return sent
