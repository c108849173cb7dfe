"""The deployment files: collector-config.yaml, docker-compose.yml, Dockerfile, .dockerignore and
deploy/postgres-init.sh. Their structure is checked with PyYAML and checked against each other and
against otel-bridge's own settings. `docker-compose config` (Debian's package) validates the
Compose file when it is installed or can be installed. There is no Docker engine here: nothing is
built or started."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import fields
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from otel_bridge.config import Config

ROOT = Path(__file__).resolve().parents[2]
SIGNALS = ("traces", "metrics", "logs")
KINDS = ("receivers", "processors", "exporters")
MIB = 1024 * 1024


def load(name: str) -> Any:
    return yaml.safe_load((ROOT / name).read_text())


@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    return load("collector-config.yaml")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load("docker-compose.yml")


def component_type(component_id: str) -> str:
    return component_id.split("/", 1)[0]


def default_of(setting: str) -> Any:
    return next(f.default for f in fields(Config) if f.name == setting)


# --- collector-config.yaml ------------------------------------------------------------------


def test_collector_has_a_pipeline_per_signal(collector: dict[str, Any]) -> None:
    pipelines = collector["service"]["pipelines"]
    assert {component_type(name) for name in pipelines} >= set(SIGNALS)
    for name, pipeline in pipelines.items():
        assert pipeline.get("receivers") and pipeline.get("exporters"), name


def test_collector_references_only_defined_components(collector: dict[str, Any]) -> None:
    for name, pipeline in collector["service"]["pipelines"].items():
        for kind in KINDS:
            for component in pipeline.get(kind, []):
                assert component in (collector.get(kind) or {}), f"{name}.{kind}: {component} is not defined"
    for extension in collector["service"].get("extensions", []):
        assert extension in (collector.get("extensions") or {}), f"extension {extension} is not defined"


def test_collector_uses_every_defined_component(collector: dict[str, Any]) -> None:
    """Optional components are left as comments in the file, never defined and unused."""
    pipelines = collector["service"]["pipelines"].values()
    for kind in KINDS:
        used = {component for pipeline in pipelines for component in pipeline.get(kind, [])}
        unused = set(collector.get(kind) or {}) - used
        assert not unused, f"{kind} defined but in no pipeline: {sorted(unused)}"
    unused = set(collector.get("extensions") or {}) - set(collector["service"].get("extensions", []))
    assert not unused, f"extensions defined but not in service.extensions: {sorted(unused)}"


def test_memory_limiter_comes_first(collector: dict[str, Any]) -> None:
    for name, pipeline in collector["service"]["pipelines"].items():
        processors = pipeline.get("processors", [])
        assert processors and component_type(processors[0]) == "memory_limiter", name


def test_exporters_queue_on_disk_and_retry(collector: dict[str, Any]) -> None:
    service_extensions = collector["service"].get("extensions", [])
    for name, exporter in collector["exporters"].items():
        queue = exporter.get("sending_queue") or {}
        storage = queue.get("storage")
        assert storage, f"{name}: the sending queue must be persistent (sending_queue.storage)"
        assert storage in collector["extensions"] and storage in service_extensions, storage
        assert component_type(storage).endswith("storage"), storage
        assert queue.get("enabled", True) and exporter.get("retry_on_failure", {}).get("enabled", True), name


def test_collector_limits_match_otel_bridge(collector: dict[str, Any]) -> None:
    """Same request limit as otel-bridge at the front; batches well below it at the back, because
    otel-bridge answers an oversized request with RESOURCE_EXHAUSTED, which the Collector drops."""
    limit = default_of("max_request_bytes")
    protocols = collector["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["max_recv_msg_size_mib"] * MIB == limit
    assert protocols["http"]["max_request_body_size"] == limit
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317" and protocols["http"]["endpoint"] == "0.0.0.0:4318"
    for name, exporter in collector["exporters"].items():
        batch = exporter["sending_queue"].get("batch")
        if batch is not None:
            assert batch.get("sizer") == "bytes" and 0 < batch["max_size"] <= limit // 2, name


def test_collector_env_vars_come_from_compose(collector: dict[str, Any], compose: dict[str, Any]) -> None:
    """Every ${env:NAME} without a default that the Collector reads is set on its service."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str):
            found.update(m.group(1) for m in re.finditer(r"\$\{env:([A-Za-z_]\w*)(?!:-)\}", node))

    walk(collector)
    assert found, "the exporter's endpoint and token come from the environment"
    environment = environment_of(compose["services"]["otel-collector"])
    assert found <= set(environment), sorted(found - set(environment))


# --- docker-compose.yml -----------------------------------------------------------------------


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def volumes_of(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each mount, short or long syntax."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts.append((volume.get("source", ""), volume["target"]))
        else:
            source, target, *_ = volume.split(":")
            mounts.append((source, target))
    return mounts


def test_compose_spec_without_version_key(compose: dict[str, Any]) -> None:
    assert "version" not in compose
    assert {"postgres", "otel-bridge-migrate", "otel-bridge", "otel-collector", "grafana", "demo"} <= set(compose["services"])


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service.get("image")
        assert image or service.get("build"), name
        if not image:
            continue
        if "@sha256:" in image:
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image}"
        if not service.get("build"):  # pulled from a registry: a full version, not a moving major
            assert re.fullmatch(r"\d+(\.\d+){1,2}([-.][\w.]+)?", tag), f"{name}: pin a minor/patch version, not {tag}"


def test_depends_on_targets_exist(compose: dict[str, Any]) -> None:
    services = compose["services"]
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        depends_on = service.get("depends_on") or {}
        targets = depends_on if isinstance(depends_on, list) else list(depends_on)
        for target in targets:
            assert target in services and target != name, f"{name} depends on unknown {target}"
            if isinstance(depends_on, dict):
                assert depends_on[target].get("condition", "service_started") in conditions
                if depends_on[target].get("condition") == "service_healthy":
                    assert services[target].get("healthcheck", {}).get("test"), f"{target} has no healthcheck"


def test_otel_bridge_serves_on_all_interfaces(compose: dict[str, Any]) -> None:
    command = command_of(compose["services"]["otel-bridge"])
    assert "serve" in command
    assert command[command.index("--grpc-listen") + 1] == "0.0.0.0:4317"
    assert command[command.index("--http-listen") + 1] == "0.0.0.0:4318"


def test_grafana_mounts_the_provisioning(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = dict((target, source) for source, target in volumes_of(grafana))
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    assert mounts["/var/lib/grafana/dashboards"] == "./grafana/dashboards"
    env = environment_of(grafana)
    assert {"OTEL_BRIDGE_GRAFANA_DB_HOST", "OTEL_BRIDGE_GRAFANA_DB_NAME", "OTEL_BRIDGE_GRAFANA_DB_USER",
            "OTEL_BRIDGE_GRAFANA_DB_PASSWORD"} <= set(env)  # fmt: skip
    assert env["OTEL_BRIDGE_GRAFANA_DB_HOST"] == "postgres:5432" and env["OTEL_BRIDGE_GRAFANA_DB_USER"] == "grafana"


def test_collector_service_matches_its_config(compose: dict[str, Any], collector: dict[str, Any]) -> None:
    service = compose["services"]["otel-collector"]
    mounts = dict((target, source) for source, target in volumes_of(service))
    config_path = next(part.split("=", 1)[1] for part in command_of(service) if part.startswith("--config="))
    assert mounts[config_path] == "./collector-config.yaml"
    queue_dir = PurePosixPath(collector["extensions"]["file_storage"]["directory"])
    volume = next((target for target in mounts if queue_dir.is_relative_to(target)), None)
    assert volume and not mounts[volume].startswith("."), "the queue directory must be on a named volume"
    assert mounts[volume] in compose["volumes"]
    assert service["image"].rpartition(":")[2] in (ROOT / "collector-config.yaml").read_text()
    assert environment_of(service)["OTEL_BRIDGE_ENDPOINT"] == "otel-bridge:4317"
    assert {port.split(":")[-1] for port in service["ports"]} == {"4317", "4318"}


def test_shared_secrets_have_one_default() -> None:
    defaults: dict[str, set[str]] = {}
    for name, default in re.findall(r"\$\{(\w+):-([^}]*)\}", (ROOT / "docker-compose.yml").read_text()):
        defaults.setdefault(name, set()).add(default)
    assert defaults
    assert not {name: values for name, values in defaults.items() if len(values) > 1}


def test_logins_are_created_then_granted(compose: dict[str, Any]) -> None:
    """deploy/postgres-init.sh creates the logins that `roles --grant-to` and the services use."""
    script = ROOT / "deploy" / "postgres-init.sh"
    assert os.access(script, os.X_OK), "a non-executable init script is sourced into the entrypoint"
    created = set(re.findall(r"CREATE ROLE (\w+) LOGIN", script.read_text()))
    services = compose["services"]
    mounts = dict((target, source) for source, target in volumes_of(services["postgres"]))
    assert any(target.startswith("/docker-entrypoint-initdb.d/") and target.endswith(".sh")
               and source == "./deploy/postgres-init.sh" for target, source in mounts.items())  # fmt: skip
    migrate = command_of(services["otel-bridge-migrate"])
    granted = dict(re.findall(r"--grant-to (\w+) (\w+)", " ".join(migrate)))
    assert created == set(granted) == {"otel_bridge_ingest", "grafana"}
    assert granted == {"otel_bridge_ingest": "otel_bridge_writer", "grafana": "otel_bridge_reader"}
    assert "otel-bridge migrate" in " ".join(migrate)
    assert environment_of(services["otel-bridge"])["OTEL_BRIDGE_DATABASE_URL"].startswith("postgresql://otel_bridge_ingest:")
    postgres_env = environment_of(services["postgres"])
    for variable in re.findall(r"\$\{(OTEL_BRIDGE_\w+_PASSWORD):\?", script.read_text()):
        assert variable in postgres_env, variable


def test_built_images_use_existing_extras(compose: dict[str, Any]) -> None:
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            wanted = set(build["args"]["EXTRAS"].split(","))
            assert "server" in wanted and wanted <= extras, name
    demo = compose["services"]["demo"]
    assert demo["profiles"] == ["demo"] and {"instrumentation", "demo"} <= set(demo["build"]["args"]["EXTRAS"].split(","))
    assert command_of(demo)[:2] == ["otel-bridge", "demo"]


@pytest.fixture(scope="module")
def docker_compose() -> str:
    """Debian's docker-compose (v1, Python): installed here when missing and we are root."""
    found = shutil.which("docker-compose")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("docker-compose (Debian package) not installed, and not root to install it")
    install = ["apt-get", "install", "-y", "--no-install-recommends", "docker-compose"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in ([install], [["apt-get", "update"], install]):
        try:
            for step in attempt:
                subprocess.run(step, capture_output=True, text=True, timeout=600, env=env, check=True)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            reason = f"{' '.join(exc.cmd)} failed: {(getattr(exc, 'stderr', '') or '')[-300:]}"
            continue
        found = shutil.which("docker-compose")
        if found:
            return found
        reason = "apt-get succeeded but no docker-compose on PATH"
    pytest.skip(f"docker-compose (Debian package) not installed: {reason}")


@pytest.mark.parametrize("profile", [[], ["--profile", "demo"]], ids=["default", "demo"])
def test_docker_compose_config_validates(docker_compose: str, profile: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    result = subprocess.run([docker_compose, "-f", "docker-compose.yml", *profile, "config", "-q"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


# --- Dockerfile and .dockerignore ----------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = (line.strip() for line in text.splitlines())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines if line and not line.startswith("#")]


def test_dockerfile_copies_what_the_package_is_built_from() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    copied = set()
    for instruction, args in dockerfile_instructions():
        if instruction == "COPY" and not args.startswith("--"):
            copied.update(source.rstrip("/") for source in args.split()[:-1])
    needed = {"pyproject.toml", "README.md", "otel_bridge", *setuptools["package-dir"].values()}
    assert copied == needed
    assert all((ROOT / source).exists() for source in copied)
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]
    assert patterns[0] == "**", ".dockerignore is an allow-list"
    included = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert included == needed
    assert not included & {".git", ".venv", "tests", "benchmarks", ".hypothesis"}


def test_dockerfile_runtime_settings() -> None:
    instructions = dockerfile_instructions()
    args = [args for instruction, args in instructions if instruction == "ARG"]
    assert "PYTHON_IMAGE=python:3.11-slim" in args and "EXTRAS=server" in args
    env = " ".join(args for instruction, args in instructions if instruction == "ENV")
    assert "PYTHONSAFEPATH=1" in env and "PYTHONDONTWRITEBYTECODE=1" in env
    users = [args for instruction, args in instructions if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert [args for instruction, args in instructions if instruction == "EXPOSE"] == ["4317 4318"]
    cmd = json.loads(next(args for instruction, args in instructions if instruction == "CMD"))
    assert cmd == ["otel-bridge", "serve", "--grpc-listen", "0.0.0.0:4317", "--http-listen", "0.0.0.0:4318"]
    healthcheck = next(args for instruction, args in instructions if instruction == "HEALTHCHECK")
    probe = json.loads(healthcheck[healthcheck.index("CMD") + 3:])
    assert probe[:2] == ["python", "-c"] and "127.0.0.1:4317" in probe[2]
    compile(probe[2], "HEALTHCHECK", "exec")
