"""Dockerfile and docker-compose.yml stay consistent with the code (no Docker engine here, so
what can be checked statically is checked: structure, commands, modules, settings)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_services_and_hosting_requirements():
    c = _compose()
    s = c["services"]
    assert {"redis", "postgres", "worker", "app", "flower"} <= set(s)
    redis_cmd = " ".join(s["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--maxmemory-policy noeviction" in redis_cmd
    assert "/_stcore/health" in " ".join(s["app"]["healthcheck"]["test"])
    gpu = s["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    for name, svc in s.items():
        if name.startswith("worker"):
            cmd = svc["command"] if isinstance(svc["command"], str) else " ".join(svc["command"])
            assert "-A tasks.celery_app worker" in cmd and "-Q" in cmd, name
    for vol in c["volumes"]:
        assert any(vol in str(v) for svc in s.values() for v in svc.get("volumes", []))


def test_dockerfile_targets_and_commands_exist():
    text = (ROOT / "Dockerfile").read_text()
    targets = re.findall(r"^FROM \S+ AS (\w+)", text, flags=re.M)
    assert set(targets) == {"app", "worker"}
    builds = {svc["build"]["target"] for svc in _compose()["services"].values() if "build" in svc}
    assert builds <= set(targets)
    for path in re.findall(r"^COPY (\S+) ", text, flags=re.M):
        assert (ROOT / path).exists(), path
    assert "streamlit run app/main.py" in text and "tasks.celery_app" in text
    assert (ROOT / "app" / "main.py").is_file()
    importlib.import_module("tasks.celery_app")


def test_env_example_lists_every_setting_the_code_reads():
    names = set(re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), flags=re.M))
    read = set()
    for py in [
        *ROOT.glob("sslengine/**/*.py"),
        *ROOT.glob("tasks/*.py"),
        *ROOT.glob("app/**/*.py"),
    ]:
        read |= set(
            re.findall(r"environ(?:\.get)?\(\s*\"(SSL_[A-Z_]+|REDIS_URL)\"", py.read_text())
        )
        read |= set(re.findall(r"environ\[\"(SSL_[A-Z_]+|REDIS_URL)\"\]", py.read_text()))
    assert read, "no settings found: the pattern is stale"
    assert read <= names, f"missing from .env.example: {sorted(read - names)}"
