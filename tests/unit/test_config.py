"""Configuration: every variable documented, every problem reported at once, no secret logged."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from otel_bridge.config import Config, ConfigError, environment_variables

ENV_TEMPLATE = Path(__file__).resolve().parents[2] / "env.template"


def test_env_template_documents_every_variable_and_its_default() -> None:
    documented = dict(re.findall(r"^([A-Z_]+)=(.*)$", ENV_TEMPLATE.read_text(), re.M))
    assert set(documented) == set(environment_variables())
    defaults = Config.from_env({}).describe()
    for name, value in documented.items():
        if value:
            assert defaults[name].lower() in (value.lower(), str(float(value)) if value.replace(".", "").isdigit() else value), name


def test_all_problems_are_reported_together() -> None:
    with pytest.raises(ConfigError) as failure:
        Config.from_env({"OTEL_BRIDGE_GRPC_LISTEN": "nope", "APM_SLOW_API_THRESHOLD_MS": "-1",
                         "ANALYTICS_SAMPLE_RATE": "2"})  # fmt: skip
    assert len(failure.value.problems) == 3
    assert "OTEL_BRIDGE_GRPC_LISTEN" in str(failure.value)


def test_secrets_are_never_described() -> None:
    config = Config.from_env({"OTEL_BRIDGE_DATABASE_URL": "postgresql://u:hunter2@db/x",
                              "OTEL_BRIDGE_IP_HASH_KEY": "k" * 32})  # fmt: skip
    described = str(config.describe())
    assert "hunter2" not in described and "k" * 32 not in described


def test_cli_flags_override_the_environment() -> None:
    config = Config.from_env({"OTEL_BRIDGE_GRPC_LISTEN": "127.0.0.1:1"}, grpc_listen="0.0.0.0:4317")
    assert config.grpc_listen == "0.0.0.0:4317"
