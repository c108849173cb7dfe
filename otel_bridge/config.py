"""Every setting of otel-bridge, read from the environment in one place.

`Config.from_env()` validates all variables and reports every problem at once (the Collector's
`errors.Join` habit), so a misconfigured deployment fails fast with one complete message.
`env.template` at the repository root documents each variable; `tests/unit/test_config.py`
keeps the two in step.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

MIB = 1024 * 1024


class ConfigError(ValueError):
    """One or more settings are invalid; the message lists all of them."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(problems))
        self.problems = problems


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "otel-bridge")


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {raw!r}")


def _listen(raw: str) -> str:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {raw!r}")
    return raw


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError(f"must be > 0, got {value}")
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError(f"must be >= 0, got {value}")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise ValueError(f"must be >= 0, got {value}")
    return value


def _rate(raw: str) -> float:
    value = float(raw)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"must be between 0 and 1, got {value}")
    return value


def _status(raw: str) -> int:
    value = int(raw)
    if not 100 <= value <= 599:
        raise ValueError(f"must be an HTTP status code, got {value}")
    return value


def _workers(raw: str) -> int:
    if raw.strip().lower() in ("", "auto"):
        return os.cpu_count() or 1
    value = int(raw)
    if value < 0:
        raise ValueError(f"must be >= 0 (0 = no worker processes), got {value}")
    return value


def _slug_rules(raw: str) -> str:
    from otel_bridge.exporters.analytics import parse_slug_rules

    try:
        parse_slug_rules(raw)
    except re.error as exc:
        raise ValueError(f"bad regular expression: {exc}") from None
    return raw


def _text(raw: str) -> str:
    return raw


def _optional_text(raw: str) -> str | None:
    return raw or None


def _tls_problems(cert: str | None, key: str | None, client_ca: str | None) -> list[str]:
    """Check the TLS files at start, so a bad file stops `serve` with the variable's name instead
    of failing inside grpc or uvicorn. Messages name paths and OpenSSL reasons, never contents."""
    import ssl

    cert_env, key_env, ca_env = "OTEL_BRIDGE_TLS_CERT_FILE", "OTEL_BRIDGE_TLS_KEY_FILE", "OTEL_BRIDGE_TLS_CLIENT_CA_FILE"
    problems = []
    if cert and not key:
        problems.append(f"{key_env}: must be set when {cert_env} is set")
    if key and not cert:
        problems.append(f"{cert_env}: must be set when {key_env} is set")
    if client_ca and not cert:
        problems.append(f"{ca_env}: mutual TLS needs {cert_env} and {key_env} too")
    for env, path in ((cert_env, cert), (key_env, key), (ca_env, client_ca)):
        if path:
            try:
                Path(path).read_bytes()
            except OSError as exc:
                problems.append(f"{env}: cannot read {path!r}: {exc.strerror or type(exc).__name__}")
    if problems or not cert or not key:
        return problems
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

    def check(env: str, what: str, load: Callable[[], None]) -> bool:
        try:
            load()
        except (ssl.SSLError, ValueError) as exc:
            problems.append(f"{env}: {what} ({getattr(exc, 'reason', None) or exc})")
            return False
        return True

    if check(cert_env, "no PEM certificate in it", lambda: context.load_verify_locations(cafile=cert)):
        # The password callback refuses: an encrypted key would otherwise prompt on the terminal.
        check(key_env, "not the unencrypted PEM private key of the certificate",
              lambda: context.load_cert_chain(cert, key, password=_no_key_password))  # fmt: skip
    if client_ca:
        check(ca_env, "no PEM CA certificate in it", lambda: context.load_verify_locations(cafile=client_ca))
    return problems


def _no_key_password() -> str:
    raise ValueError("encrypted private keys are not supported")


def _setting(env: str, parse: Callable[[str], Any], default: Any, secret: bool = False) -> Any:
    return field(default=default, metadata={"env": env, "parse": parse, "secret": secret})


@dataclass(frozen=True)
class Config:
    """Resolved settings. Field metadata names the environment variable behind each field."""

    # Where the data goes.
    database_url: str | None = _setting("OTEL_BRIDGE_DATABASE_URL", _optional_text, None, secret=True)
    data_dir: str = _setting("OTEL_BRIDGE_DATA_DIR", _text, "")
    db_pool_size: int = _setting("OTEL_BRIDGE_DB_POOL_SIZE", _positive_int, 4)
    db_timeout_s: float = _setting("OTEL_BRIDGE_DB_TIMEOUT_S", _non_negative_float, 2.0)
    db_statement_timeout_ms: int = _setting("OTEL_BRIDGE_DB_STATEMENT_TIMEOUT_MS", _positive_int, 4000)
    # The receiver.
    grpc_listen: str = _setting("OTEL_BRIDGE_GRPC_LISTEN", _listen, "127.0.0.1:4317")
    http_listen: str = _setting("OTEL_BRIDGE_HTTP_LISTEN", _listen, "127.0.0.1:4318")
    max_request_bytes: int = _setting("OTEL_BRIDGE_MAX_REQUEST_BYTES", _positive_int, 16 * MIB)
    max_concurrent_exports: int = _setting("OTEL_BRIDGE_MAX_CONCURRENT_EXPORTS", _positive_int, 4)
    max_queued_exports: int = _setting("OTEL_BRIDGE_MAX_QUEUED_EXPORTS", _non_negative_int, 8)
    ingest_workers: int = _setting("OTEL_BRIDGE_INGEST_WORKERS", _workers, os.cpu_count() or 1)
    serve_workers: int = _setting("OTEL_BRIDGE_WORKERS", _positive_int, 1)
    reuse_port: bool = _setting("OTEL_BRIDGE_REUSE_PORT", _bool, False)
    queue_timeout_s: float = _setting("OTEL_BRIDGE_QUEUE_TIMEOUT_S", _non_negative_float, 2.0)
    retry_after_s: float = _setting("OTEL_BRIDGE_RETRY_AFTER_S", _non_negative_float, 2.0)
    shutdown_grace_s: float = _setting("OTEL_BRIDGE_SHUTDOWN_GRACE_S", _non_negative_float, 5.0)
    auth_tokens: str | None = _setting("OTEL_BRIDGE_AUTH_TOKENS", _optional_text, None, secret=True)
    tls_cert_file: str | None = _setting("OTEL_BRIDGE_TLS_CERT_FILE", _optional_text, None)
    tls_key_file: str | None = _setting("OTEL_BRIDGE_TLS_KEY_FILE", _optional_text, None)
    tls_client_ca_file: str | None = _setting("OTEL_BRIDGE_TLS_CLIENT_CA_FILE", _optional_text, None)
    cors_origins: str | None = _setting("OTEL_BRIDGE_CORS_ORIGINS", _optional_text, None)
    log_level: str = _setting("OTEL_BRIDGE_LOG_LEVEL", _text, "INFO")
    page_slug_rules: str | None = _setting("OTEL_BRIDGE_PAGE_SLUG_RULES", _slug_rules, None)
    # Privacy.
    ip_hash_key: str | None = _setting("OTEL_BRIDGE_IP_HASH_KEY", _optional_text, None, secret=True)
    # Data lifecycle.
    retention_raw_days: int = _setting("OTEL_BRIDGE_RETENTION_RAW_DAYS", _positive_int, 90)
    retention_errors_days: int = _setting("OTEL_BRIDGE_RETENTION_ERRORS_DAYS", _positive_int, 365)
    retention_aggregates_days: int = _setting("OTEL_BRIDGE_RETENTION_AGGREGATES_DAYS", _positive_int, 730)
    maintenance_interval_s: float = _setting("OTEL_BRIDGE_MAINTENANCE_INTERVAL_S", _non_negative_float, 300.0)
    rollup_days: int = _setting("OTEL_BRIDGE_ROLLUP_DAYS", _positive_int, 3)
    alert_webhook_url: str | None = _setting("OTEL_BRIDGE_ALERT_WEBHOOK_URL", _optional_text, None, secret=True)
    alert_spike_factor: float = _setting("OTEL_BRIDGE_ALERT_SPIKE_FACTOR", _non_negative_float, 10.0)
    alert_spike_min_events: int = _setting("OTEL_BRIDGE_ALERT_SPIKE_MIN_EVENTS", _positive_int, 10)
    alert_max_per_minute: int = _setting("OTEL_BRIDGE_ALERT_MAX_PER_MINUTE", _positive_int, 30)
    # The seed plan's variables, same names and meaning.
    analytics_enabled: bool = _setting("ANALYTICS_ENABLED", _bool, True)
    analytics_sample_rate: float = _setting("ANALYTICS_SAMPLE_RATE", _rate, 1.0)
    analytics_batch_size: int = _setting("ANALYTICS_BATCH_SIZE", _positive_int, 10)
    analytics_batch_interval_ms: int = _setting("ANALYTICS_BATCH_INTERVAL_MS", _positive_int, 5000)
    apm_enabled: bool = _setting("APM_ENABLED", _bool, True)
    apm_slow_query_threshold_ms: float = _setting("APM_SLOW_QUERY_THRESHOLD_MS", _non_negative_float, 1000.0)
    apm_slow_api_threshold_ms: float = _setting("APM_SLOW_API_THRESHOLD_MS", _non_negative_float, 500.0)
    apm_api_error_min_status: int = _setting("APM_API_ERROR_MIN_STATUS", _status, 500)
    crashlytics_enabled: bool = _setting("CRASHLYTICS_ENABLED", _bool, True)
    crashlytics_environment: str | None = _setting("CRASHLYTICS_ENVIRONMENT", _optional_text, None)
    crashlytics_release_version: str | None = _setting("CRASHLYTICS_RELEASE_VERSION", _optional_text, None)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Read every variable; raise ConfigError naming all invalid ones. `overrides` (from CLI
        flags) win over the environment and are validated the same way."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        for f in fields(cls):
            name = f.metadata["env"]
            raw = overrides.get(f.name)
            if raw is None:
                raw = env.get(name)
            if raw is None or (raw == "" and f.default is not None):
                continue
            try:
                values[f.name] = f.metadata["parse"](str(raw))
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
        if problems:
            raise ConfigError(problems)
        config = cls(**values)
        if not config.data_dir:
            config = cls(**{**values, "data_dir": _default_data_dir()})
        if config.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError([f"OTEL_BRIDGE_LOG_LEVEL: expected DEBUG/INFO/WARNING/ERROR, got {config.log_level!r}"])
        tls_problems = _tls_problems(config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file)
        if tls_problems:
            raise ConfigError(tls_problems)
        return config

    def maintenance_settings(self) -> Any:
        from otel_bridge.maintenance import MaintenanceSettings

        return MaintenanceSettings(self.retention_raw_days, self.retention_errors_days,
                                   self.retention_aggregates_days, self.rollup_days)  # fmt: skip

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    def describe(self) -> dict[str, str]:
        """Settings for a startup log line: secrets are never printed, only whether they are set."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata["secret"]:
                out[f.metadata["env"]] = "(set)" if value else "(unset)"
            else:
                out[f.metadata["env"]] = str(value)
        return out


def environment_variables() -> list[str]:
    """Names of every variable Config reads (used to check env.template)."""
    return [f.metadata["env"] for f in fields(Config)]
