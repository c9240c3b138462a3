"""Dockerfile and docker-compose.yml stay consistent with the code (no Docker engine here, so
what can be checked statically is checked: structure, profiles, targets, base images, the
executables and options each command uses, settings, and the README's compose commands)."""

from __future__ import annotations

import importlib
import json
import re
import shlex
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import click
import pytest
import typer
import yaml
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent
# Python each base image's distribution ships (what `apt-get install python3.X` finds there).
DISTRO_PYTHON = {"ubuntu24.04": "3.12", "ubuntu22.04": "3.10", "ubuntu20.04": "3.8"}


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _services() -> dict[str, dict]:
    return _compose()["services"]


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` (nested) and ``$$`` (the subset used here)."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            depth, j = 1, i + 2
            while depth:
                assert j < len(text), f"unbalanced ${{ in {text!r}"
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            name, sep, default = text[i + 2 : j - 1].partition(":-")
            assert re.fullmatch(r"[A-Za-z_]\w*", name), f"unsupported expression in {text!r}"
            out.append(env.get(name) or (_interpolate(default, env) if sep else ""))
            i = j
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _variables(text: str) -> set[str]:
    return set(re.findall(r"\$\{([A-Za-z_]\w*)", text))


def _invocations(command: str | list[str], env: dict[str, str]) -> list[list[str]]:
    """The argv of each program a command runs (``sh -c "a && b"`` gives two)."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    argv = [_interpolate(a, env) for a in argv]
    if argv[:2] == ["sh", "-c"]:
        assert len(argv) == 3, argv
        parts, current = [], []
        for token in shlex.split(argv[2]):
            if token == "&&":
                parts.append(current)
                current = []
            else:
                current.append(token)
        return [*parts, current]
    return [argv]


def _option(argv: list[str], *names: str) -> str:
    for k, token in enumerate(argv):
        if token in names:
            return argv[k + 1]
    raise AssertionError(f"none of {names} in {argv}")


# ---------------------------------------------------------------------------- Dockerfile


def _dockerfile_stages() -> dict[str, dict]:
    """{target: {"base": image, "lines": [logical instruction lines]}}."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM (\S+) AS (\S+)$", line)
        if m:
            current = stages.setdefault(m.group(2), {"base": m.group(1), "lines": []})
        else:
            assert current is not None, f"instruction before the first FROM ... AS: {line}"
            current["lines"].append(line)
    return stages


def _cmd(stage: dict) -> list[str]:
    (cmd,) = [ln for ln in stage["lines"] if ln.startswith("CMD ")]
    return json.loads(cmd[4:])


def test_dockerfile_targets_and_copied_paths_exist():
    stages = _dockerfile_stages()
    assert set(stages) == {"app", "worker"}
    builds = {s["build"]["target"] for s in _services().values() if "build" in s}
    assert builds <= set(stages), f"compose builds unknown targets: {builds - set(stages)}"
    for stage in stages.values():
        for line in stage["lines"]:
            if line.startswith("COPY "):
                assert (ROOT / line.split()[1]).exists(), line
    importlib.import_module("tasks.celery_app")


def test_dockerfile_python_satisfies_requires_python():
    """The worker stage's CUDA base is Ubuntu 24.04, whose own Python (3.12) the project
    cannot use: the Python it installs must satisfy requires-python, and when that is not
    the distribution's own, a repository that has it (deadsnakes) is added first."""
    requires = SpecifierSet(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    )
    stages = _dockerfile_stages()
    app_python = re.match(r"python:(\d+\.\d+)", stages["app"]["base"]).group(1)
    assert app_python in requires, stages["app"]["base"]
    worker = stages["worker"]
    assert worker["base"].startswith("nvidia/cuda:") and "runtime" in worker["base"]
    distro = re.search(r"(ubuntu\d+\.\d+)$", worker["base"]).group(1)
    run = " && ".join(ln[4:] for ln in worker["lines"] if ln.startswith("RUN "))
    steps = [s.strip() for s in re.split(r"&&|;", run)]
    installs = [k for k, s in enumerate(steps) if s.startswith("apt-get install")]
    wanted = {v for k in installs for v in re.findall(r"\bpython(3\.\d+)\b", steps[k])}
    assert wanted and all(v in requires for v in wanted), f"installs python {wanted}"
    (version,) = wanted
    assert f"python{version}-venv" in run and f"python{version} -m venv /opt/venv" in run
    if DISTRO_PYTHON[distro] != version:
        ppa = [k for k, s in enumerate(steps) if s == "add-apt-repository -y ppa:deadsnakes/ppa"]
        assert ppa, f"{distro} ships Python {DISTRO_PYTHON[distro]}, not {version}: add a PPA"
        install_py = [k for k in installs if f"python{version}" in steps[k]][0]
        assert ppa[0] < install_py, "the PPA must be added before python is installed"
        between = steps[ppa[0] + 1 : install_py]
        assert "apt-get update" in between, "apt-get update after adding the PPA"
        before = " ".join(steps[: ppa[0]])
        assert "software-properties-common" in before, "add-apt-repository needs it installed"
    assert any(ln.startswith("ENV PATH=/opt/venv/bin") for ln in worker["lines"])


# ---------------------------------------------------------------------------- compose


def test_compose_services_and_hosting_requirements():
    c = _compose()
    s = c["services"]
    assert {"redis", "postgres", "worker", "worker-gpu", "worker-gpu-b", "app", "flower"} <= set(s)
    redis_cmd = " ".join(s["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--maxmemory-policy noeviction" in redis_cmd
    assert "/_stcore/health" in " ".join(s["app"]["healthcheck"]["test"])
    assert any("/var/lib/postgresql/data" in v for v in s["postgres"]["volumes"])
    assert s["postgres"]["profiles"] == ["postgres"] and s["flower"]["profiles"] == ["flower"]
    for vol in c["volumes"]:
        assert any(vol in str(v) for svc in s.values() for v in svc.get("volumes", []))
    for name, svc in s.items():
        for src in svc.get("volumes", []):
            host = _interpolate(src, {}).split(":")[0]
            # Docker creates a missing bind-mount source as an empty folder: fine for ./data,
            # wrong for a file (a missing secrets.toml would become a directory).
            if host.startswith(".") and Path(host).suffix:
                assert (ROOT / host).is_file(), f"{name} mounts {host}, absent on a fresh clone"


def _gpu_devices(svc: dict) -> list[dict]:
    return svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_plain_up_needs_no_gpu_and_the_gpu_profile_adds_gpu_workers():
    s = _services()
    stages = _dockerfile_stages()
    default = {n for n, svc in s.items() if not svc.get("profiles")}
    assert default == {"redis", "worker", "app"}
    for name in default:
        assert not _gpu_devices(s[name]), f"{name} reserves a GPU in the default profile"
        deps = s[name].get("depends_on", {})
        assert set(deps) <= default, f"{name} depends on a service outside the default profile"
        target = s[name].get("build", {}).get("target")
        if target:
            assert not stages[target]["base"].startswith("nvidia/"), f"{name}: CUDA image"
    assert s["worker"]["build"]["target"] == "app"  # the CPU worker: the slim image

    gpu = {n for n, svc in s.items() if _gpu_devices(svc)}
    assert gpu == {"worker-gpu", "worker-gpu-b"}
    assert {n for n in s if "gpu" in s[n].get("profiles", [])} == {"worker-gpu"}
    assert s["worker-gpu-b"]["profiles"] == ["gpu-b"]
    for name in gpu:
        svc = s[name]
        assert svc["build"]["target"] == "worker"
        assert stages["worker"]["base"].startswith("nvidia/cuda:")
        for dev in _gpu_devices(svc):
            assert dev["driver"] == "nvidia" and dev["capabilities"] == ["gpu"], name
            assert ("count" in dev) != ("device_ids" in dev), name


def _worker_argv(svc: dict, env: dict[str, str]) -> list[str]:
    (argv,) = [a for a in _invocations(svc["command"], env) if a[0] == "celery"]
    assert argv[1:4] == ["-A", "tasks.celery_app", "worker"], argv
    return argv


@pytest.mark.parametrize(
    "env, cpu, gpu",
    [
        ({}, "ssl", "ssl"),
        ({"SSL_CPU_QUEUE": "cpu"}, "cpu", "ssl"),
        ({"SSL_QUEUE": "main"}, "main", "main"),
        ({"SSL_QUEUE": "main", "SSL_CPU_QUEUE": "cpu"}, "cpu", "main"),
    ],
)
def test_worker_queues(env, cpu, gpu):
    s = _services()
    workers = {n: _worker_argv(svc, env) for n, svc in s.items() if n.startswith("worker")}
    queues = {n: _option(argv, "-Q", "--queues") for n, argv in workers.items()}
    assert queues == {"worker": cpu, "worker-gpu": gpu, "worker-gpu-b": "gpu-b"}
    hostnames = [_option(argv, "-n", "--hostname") for argv in workers.values()]
    assert len(set(hostnames)) == len(hostnames)
    for argv in workers.values():
        assert _option(argv, "-c", "--concurrency") == "1"
    for n in ("worker", "worker-gpu"):  # their default queue (watchdog re-queues) is SSL_QUEUE
        assert _interpolate(s[n]["environment"]["SSL_QUEUE"], env) == env.get("SSL_QUEUE", "ssl")


# ------------------------------------------------------------------ commands and options


def _cli_group(executable: str) -> click.Command:
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert executable in scripts, f"no console script '{executable}' in the installed packages"
    if executable == "celery":
        from celery.bin.celery import celery

        return celery
    if executable == "streamlit":
        from streamlit.web.cli import main

        return main
    if executable == "sslengine":
        assert scripts["sslengine"] == "sslengine.cli:app"
        from sslengine.cli import app

        return typer.main.get_command(app)
    raise AssertionError(f"unexpected executable '{executable}'")


def _check_invocation(argv: list[str], where: str) -> None:
    group = _cli_group(argv[0])
    names = [t for t in argv[1:] if t in getattr(group, "commands", {})]
    assert names, f"{where}: no subcommand of {argv[0]} in {argv}"
    sub = group.commands[names[0]]
    known = {o for p in [*group.params, *sub.params] for o in [*p.opts, *p.secondary_opts]}
    for token in argv[1:]:
        if token.startswith("-"):
            assert token.split("=")[0] in known, f"{where}: {argv[0]} {sub.name} has no {token}"
    if argv[0] == "celery":
        importlib.import_module(_option(argv, "-A", "--app"))
    if argv[0] == "streamlit":
        assert (ROOT / argv[argv.index("run") + 1]).is_file()


def _our_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every program run in a container built from this Dockerfile."""
    found = []
    for name, stage in _dockerfile_stages().items():
        found += [(f"Dockerfile {name}", a) for a in _invocations(_cmd(stage), {})]
    for name, svc in _services().items():
        if "build" in svc and "command" in svc:
            found += [(f"compose {name}", a) for a in _invocations(svc["command"], {})]
    return found


def test_every_command_runs_an_installed_executable_with_real_options():
    commands = _our_commands()
    assert {argv[0] for _, argv in commands} == {"sslengine", "celery", "streamlit"}
    for where, argv in commands:
        _check_invocation(argv, where)


def test_the_option_check_catches_a_typo():
    with pytest.raises(AssertionError, match="has no --prefetch-multiplyer"):
        _check_invocation(
            ["celery", "-A", "tasks.celery_app", "worker", "--prefetch-multiplyer", "1"], "t"
        )
    with pytest.raises(AssertionError, match="no subcommand"):
        _check_invocation(["sslengine", "migrat"], "t")
    with pytest.raises(AssertionError, match="no console script"):
        _check_invocation(["selery", "worker"], "t")


def test_healthchecks_are_valid_python():
    text = (ROOT / "Dockerfile").read_text()
    (docker_hc,) = re.findall(r'^HEALTHCHECK CMD python -c "(.+)"$', text, flags=re.M)
    compose_hc = _services()["app"]["healthcheck"]["test"]
    assert compose_hc[:3] == ["CMD", "python", "-c"]
    for code in (docker_hc, compose_hc[3]):
        compile(code, "healthcheck", "exec")
        assert "/_stcore/health" in code and ":8501" in code


# ---------------------------------------------------------------------------- settings, docs


def test_env_example_lists_every_setting_the_code_and_compose_read():
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
    compose_vars = _variables((ROOT / "docker-compose.yml").read_text())
    assert {"SSL_QUEUE", "SSL_CPU_QUEUE", "SSL_DATA_DIR"} <= compose_vars
    assert compose_vars <= names, f"missing from .env.example: {sorted(compose_vars - names)}"


def test_readme_compose_commands_name_real_profiles_and_services():
    s = _services()
    profiles = {p for svc in s.values() for p in svc.get("profiles", [])}
    readme = (ROOT / "README.md").read_text()
    lines = re.findall(r"^(docker compose [^#\n]*)", readme, flags=re.M)
    lines += re.findall(r"`(docker compose [^`]*)`", readme)
    assert len(lines) >= 4
    for line in lines:
        argv = shlex.split(line)
        used = {argv[k + 1] for k, t in enumerate(argv) if t == "--profile"}
        assert used <= profiles, f"{line!r}: unknown profile {used - profiles}"
        if "up" in argv:
            named = [t for t in argv[argv.index("up") + 1 :] if not t.startswith("-")]
            for svc in named:
                assert svc in s, f"{line!r}: no service {svc}"
                need = set(s[svc].get("profiles", []))
                assert not need or need & used, f"{line!r}: {svc} needs --profile {need}"
    hosting = readme.split("## Hosting for a team", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"^docker compose .*--profile gpu up", hosting, flags=re.M)
    assert "SSL_CPU_QUEUE" in hosting
