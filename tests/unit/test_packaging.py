"""Packaging guards (research/aesthetics.md §6) and the CLI's --help on every command."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_declared() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = setuptools["package-dir"]
    on_disk = {".".join(("otel_bridge", *p.parent.relative_to(ROOT / "otel_bridge").parts))
               for p in (ROOT / "otel_bridge").rglob("__init__.py")}  # fmt: skip
    on_disk |= {f"otel_bridge.{folder}" for folder in ("instrumentation", "exporters", "migrations")}
    assert on_disk == set(setuptools["packages"])
    assert set(mapped.values()) == {"instrumentation", "exporters", "migrations"}


def test_instrumentation_import_pulls_in_no_server_code() -> None:
    code = ("import sys, otel_bridge.instrumentation, otel_bridge.conventions; "
            "bad = [m for m in ('grpc', 'psycopg', 'psycopg_pool', 'sqlalchemy', 'alembic', 'exporters', 'instrumentation') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("command", [[], ["serve"], ["migrate"], ["demo"], ["errors"], ["errors", "list"], ["errors", "resolve"]])
def test_every_command_has_help(command: list[str]) -> None:
    cli = Path(sys.executable).parent / "otel-bridge"
    result = subprocess.run([str(cli), *command, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: otel-bridge" in result.stdout
    assert "env.template" in result.stdout
