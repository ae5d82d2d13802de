"""The production files, checked without a Docker engine (none runs on the development box):
what the compose file and the image name must exist in the code they ship."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from db.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
PQZ_SERVICES = sorted(
    name for name, service in SERVICES.items() if service.get("image") == "pqz:latest"
)


def test_compose_runs_the_whole_production_set() -> None:
    assert {"postgres", "redis", "migrate", "api", "worker", "beat"} <= set(SERVICES)
    worker_devices = SERVICES["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert worker_devices[0]["capabilities"] == ["gpu"]
    for name in ("postgres", "redis", "api"):
        assert "healthcheck" in SERVICES[name], name


def test_every_dependency_names_a_service_and_a_condition_compose_knows() -> None:
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in SERVICES.items():
        for target, rule in service.get("depends_on", {}).items():
            assert target in SERVICES, (name, target)
            assert rule["condition"] in conditions, (name, rule)
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[target], (name, target)


@pytest.mark.parametrize("name", PQZ_SERVICES)
def test_each_pqz_service_runs_a_real_command_with_known_settings(name: str) -> None:
    service = SERVICES[name]
    fields = {f"PQZ_{field.upper()}" for field in Settings.model_fields}
    assert set(service["environment"]) <= fields, set(service["environment"]) - fields
    if "entrypoint" in service:  # celery beat: the Celery application must import
        module = service["entrypoint"][service["entrypoint"].index("-A") + 1]
        assert hasattr(importlib.import_module(module), "app")
        return
    # `pqz <command> <options> --help` fails on an unknown command or option.
    result = CliRunner().invoke(app, [*service["command"], "--help"])
    assert result.exit_code == 0, result.output


def test_the_image_holds_every_package_the_project_installs() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = {
        source
        for line in re.findall(r"^COPY (.+)$", dockerfile, flags=re.MULTILINE)
        for source in line.split()[:-1]  # the last word is the destination
    }
    for source in copied:
        assert (ROOT / source).exists(), source
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages | {"migrations", "pyproject.toml", "README.md"} <= copied
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert not copied & ignored
