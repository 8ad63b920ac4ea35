"""The deployment files say what docs/reliability.md asks: AOF Redis, one-shot migrations, a GPU."""

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO / "requirements"
TORCH_PACKAGES = {"torch", "transformers", "tokenizers", "accelerate", "peft", "safetensors"}


def normalize(name: str) -> str:
    """PEP 503 name: PyYAML and pyyaml, typing_extensions and typing-extensions are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_lines(path: Path) -> list[str]:
    """Non-empty, non-comment lines of a requirements file."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def pins(path: Path, follow_includes: bool = True) -> dict[str, str]:
    """name -> version of every `name[extras]==version` line, following -r includes."""
    found: dict[str, str] = {}
    for line in requirement_lines(path):
        if line.startswith("-r"):
            if follow_includes:
                found.update(pins(path.parent / line[2:].strip()))
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*==\s*([^\s;]+)", line)
        assert match, f"{path.name}: {line!r} is not an exact name==version pin"
        found[normalize(match.group(1))] = match.group(3)
    return found


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml, anchors resolved."""
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def command_text(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else str(command)


def test_redis_keeps_messages_and_never_evicts(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    args = command_text(redis).split()
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--appendfsync") + 1] == "everysec"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert "ports" not in redis, "Redis belongs on the private network only"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_postgres_and_a_one_shot_migration_gate_the_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "postgres" in services
    migrate = services["migrate"]
    assert command_text(migrate) == "gpt2ft migrate"
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["DATABASE_URL"].endswith("@postgres:5432/gpt2ft")
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert env["GPT2FT_HOME"] == "/data"
        assert "GPT2FT_DEV_API_KEY" in env


def test_the_worker_reserves_one_gpu(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert command_text(worker) == "gpt2ft worker"
    assert worker["build"]["dockerfile"] == "Dockerfile.worker"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_health_checks_and_the_api(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    api = services["api"]
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    assert command_text(api).startswith("gpt2ft api --host 0.0.0.0")
    assert api["build"]["dockerfile"] == "Dockerfile.api"
    assert any(str(port).endswith(":8000") for port in api["ports"])


def test_api_and_worker_share_one_data_volume(compose: dict[str, Any]) -> None:
    services = compose["services"]

    def data_volume(name: str) -> str:
        mounts = [v for v in services[name]["volumes"] if v.endswith(":/data")]
        assert len(mounts) == 1, f"{name} mounts no volume at /data"
        return mounts[0].split(":")[0]

    assert data_volume("api") == data_volume("worker")
    assert data_volume("api") in compose["volumes"]


def test_flower_is_optional(compose: dict[str, Any]) -> None:
    assert compose["services"]["flower"]["profiles"] == ["monitoring"]


def pip_installs(dockerfile: str) -> list[list[str]]:
    """The argument lists of every `pip install` in a Dockerfile's RUN lines."""
    text = (REPO / dockerfile).read_text().replace("\\\n", " ")
    runs = [line[4:] for line in text.splitlines() if line.startswith("RUN ")]
    installs = []
    for run in runs:
        for step in run.split("&&"):
            words = step.split()
            if "pip" in words and "install" in words:
                installs.append(words[words.index("install") + 1 :])
    return installs


def requirement_files(args: list[str]) -> list[str]:
    return [args[i + 1] for i, word in enumerate(args) if word == "-r"]


def named_packages(args: list[str]) -> list[str]:
    """Words of a pip install that name a package directly (not a flag, file or `.`)."""
    named, skip_next = [], False
    for word in args:
        if skip_next:
            skip_next = False
        elif word in {"-r", "-c", "--requirement", "--constraint"}:
            skip_next = True
        elif not word.startswith("-") and word != ".":
            named.append(word)
    return named


@pytest.mark.parametrize(
    ("dockerfile", "requirements"),
    [("Dockerfile.api", "requirements/api.txt"), ("Dockerfile.worker", "requirements/worker.txt")],
)
def test_images_install_pinned_requirements(dockerfile: str, requirements: str) -> None:
    installs = pip_installs(dockerfile)
    with_requirements = [args for args in installs if requirement_files(args)]
    assert [requirement_files(args) for args in with_requirements] == [[requirements]]
    args = with_requirements[0]
    assert args[args.index("-c") + 1] == "requirements/constraints.txt"
    # The project itself goes in without resolving anything more.
    assert ["--no-deps", "."] in installs
    bare = [word for args in installs for word in named_packages(args)]
    assert not bare, f"{dockerfile} installs packages outside the requirements files: {bare}"


def test_the_api_image_pulls_no_torch() -> None:
    api_packages = set(pins(REQUIREMENTS / "api.txt"))
    assert "fastapi" in api_packages and "uvicorn" in api_packages
    assert not api_packages & TORCH_PACKAGES
    worker_packages = set(pins(REQUIREMENTS / "worker.txt"))
    assert {"torch", "transformers", "celery"} <= worker_packages


def test_every_requirement_is_pinned_in_the_constraints_file() -> None:
    constraints = pins(REQUIREMENTS / "constraints.txt")
    for path in sorted(REQUIREMENTS.glob("*.txt")):
        for name, version in pins(path, follow_includes=False).items():
            assert constraints.get(name) == version, (
                f"{path.name}: {name}=={version} but constraints.txt says {constraints.get(name)}"
            )


def test_docker_compose_config_is_valid() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker client not installed: compose file checked by the tests above only")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed here")
    result = subprocess.run(
        [docker, "compose", "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
