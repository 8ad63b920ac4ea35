"""The deployment files say what docs/reliability.md asks: AOF Redis, one-shot setup, a GPU.

Static checks here; `make compose-smoke` (scripts/compose-smoke.sh) runs the stack for real.
"""

import ast
import contextlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from tests.services import missing_service

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO / "requirements"
TORCH_PACKAGES = {"torch", "transformers", "tokenizers", "accelerate", "peft", "safetensors"}
FIRST_PARTY = {"api", "worker", "shared", "cli", "migrations"}
# What each image runs: every import of its own code, and the module-level imports of the CLI
# (a command's lazy imports, like uvicorn for `gpt2ft api`, belong to the image that runs it).
IMAGE_CODE = {
    "api.txt": ["api", "shared", "migrations"],
    "worker.txt": ["worker", "shared", "migrations", "scripts/worker_health.py"],
}


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


def requirements_of(path: Path) -> list[Requirement]:
    """Every requirement of a requirements file, -r includes followed."""
    found: list[Requirement] = []
    for line in requirement_lines(path):
        if line.startswith("-r"):
            found += requirements_of(path.parent / line[2:].strip())
        else:
            found.append(Requirement(line))
    return found


def closure(wanted: list[Requirement]) -> set[str]:
    """Names of everything pip installs for `wanted` here (metadata of this environment)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = list(wanted)
    while todo:
        requirement = todo.pop()
        key = (normalize(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        for spec in importlib.metadata.requires(requirement.name) or []:
            dependency = Requirement(spec)
            extras = requirement.extras or {""}
            marker = dependency.marker
            if marker is None or any(marker.evaluate({"extra": extra}) for extra in extras):
                todo.append(dependency)
    return {name for name, _ in seen}


def imported_names(tree: ast.AST, module_level_only: bool) -> list[str]:
    """Absolute module names imported in tree; function bodies skipped if module_level_only."""
    names: list[str] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        if module_level_only and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        todo += ast.iter_child_nodes(node)
    return names


def third_party_imports(roots: list[str], module_level_only: bool = False) -> dict[str, str]:
    """Top-level module -> the first file importing it, for every non-stdlib import in roots."""
    files: list[Path] = []
    for root in roots:
        path = REPO / root
        files += [path] if path.is_file() else sorted(path.rglob("*.py"))
    found: dict[str, str] = {}
    for file in files:
        tree = ast.parse(file.read_text(), str(file))
        for name in imported_names(tree, module_level_only):
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                found.setdefault(top, str(file.relative_to(REPO)))
    return found


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} (the forms our files use)."""

    def value(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise ValueError(arg)
        return arg if op == ":-" else ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", value, text)


def load_compose(name: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """A compose file, anchors resolved; interpolated with env when one is given."""
    text = (REPO / name).read_text()
    return yaml.safe_load(text if env is None else interpolate(text, env))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml with anchors resolved, variables left as written."""
    return load_compose("docker-compose.yml")


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


def test_postgres_password_is_required_and_shared() -> None:
    with pytest.raises(ValueError, match="set POSTGRES_PASSWORD"):
        load_compose("docker-compose.yml", env={})
    services = load_compose("docker-compose.yml", env={"POSTGRES_PASSWORD": "s3cret"})["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "s3cret"
    for name in ("setup", "api", "worker", "worker-cpu"):
        url = services[name]["environment"]["DATABASE_URL"]
        assert url == "postgresql+psycopg://gpt2ft:s3cret@postgres:5432/gpt2ft"


WORKERS = ("worker", "worker-cpu")


def test_a_one_shot_setup_gates_the_api_and_workers(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "migrate" not in services, "setup migrates; a second one-shot would race it"
    setup = services["setup"]
    assert command_text(setup) == "gpt2ft setup"
    assert setup["restart"] == "no"
    assert setup["depends_on"]["postgres"]["condition"] == "service_healthy"
    # gpt2-tiny needs torch: setup runs on the worker image.
    assert setup["image"] == services["worker"]["image"]
    assert setup["build"] == services["worker"]["build"]
    for name in ("api", *WORKERS):
        depends = services[name]["depends_on"]
        assert depends["setup"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"
        env = services[name]["environment"]
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert env["GPT2FT_HOME"] == "/data"
        assert "GPT2FT_DEV_API_KEY" in env


def test_the_worker_reserves_one_gpu_and_the_cpu_override_swaps_it(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    worker, cpu = services["worker"], services["worker-cpu"]
    assert command_text(worker) == "gpt2ft worker"
    assert worker["build"]["dockerfile"] == "Dockerfile.worker"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    # device_ids, not count: a count makes Docker hand out GPU 0 to every replica.
    assert devices == [
        {"driver": "nvidia", "device_ids": ["${GPT2FT_GPU:-0}"], "capabilities": ["gpu"]}
    ]
    # The CPU worker is the same service without a device, off unless the override says so.
    assert {k: v for k, v in cpu.items() if k != "deploy"} == {
        k: v for k, v in worker.items() if k != "deploy"
    }
    assert cpu["deploy"] == {"replicas": 0}
    override = load_compose("docker-compose.cpu.yml")
    assert override == {
        "services": {
            "worker": {"deploy": {"replicas": 0}},
            "worker-cpu": {"deploy": {"replicas": 1}},
        }
    }


def test_workers_have_a_health_check_that_looks_at_the_worker(compose: dict[str, Any]) -> None:
    for name in WORKERS:
        check = compose["services"][name]["healthcheck"]
        assert check["test"] == ["CMD", "python", "/app/scripts/worker_health.py"]
        assert check["start_period"] and check["retries"] >= 2
    assert (REPO / "scripts" / "worker_health.py").is_file()
    ignored = (REPO / ".dockerignore").read_text().split()
    assert not {"scripts", "scripts/", "scripts/*"} & set(ignored), "the image needs scripts/"


def test_the_api_is_published_on_loopback_unless_asked() -> None:
    env = {"POSTGRES_PASSWORD": "x"}
    api = load_compose("docker-compose.yml", env)["services"]["api"]
    assert api["ports"] == ["127.0.0.1:8000:8000"]
    assert command_text(api).startswith("gpt2ft api --host 0.0.0.0")  # inside its network
    exposed = load_compose("docker-compose.yml", {**env, "GPT2FT_BIND": "0.0.0.0"})
    assert exposed["services"]["api"]["ports"] == ["0.0.0.0:8000:8000"]
    flower = load_compose("docker-compose.yml", env)["services"]["flower"]
    assert all(port.startswith("127.0.0.1:") for port in flower["ports"])


def test_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    api = services["api"]
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    assert api["build"]["dockerfile"] == "Dockerfile.api"


def test_api_setup_and_workers_share_one_data_volume(compose: dict[str, Any]) -> None:
    services = compose["services"]

    def data_volume(name: str) -> str:
        mounts = [v for v in services[name]["volumes"] if v.endswith(":/data")]
        assert len(mounts) == 1, f"{name} mounts no volume at /data"
        return mounts[0].split(":")[0]

    volumes = {data_volume(name) for name in ("api", "setup", *WORKERS)}
    assert len(volumes) == 1
    assert volumes <= set(compose["volumes"])


def test_flower_is_optional(compose: dict[str, Any]) -> None:
    assert compose["services"]["flower"]["profiles"] == ["monitoring"]


def test_base_images_can_be_swapped_for_a_mirror() -> None:
    services = load_compose("docker-compose.yml", {"POSTGRES_PASSWORD": "x"})["services"]
    assert services["redis"]["image"] == "redis:7.2-alpine"
    assert services["postgres"]["image"] == "postgres:16"
    for name in ("api", "setup", *WORKERS):
        assert services[name]["build"]["args"] == {"PYTHON_IMAGE": "python:3.11-slim"}
    mirrored = load_compose(
        "docker-compose.yml",
        {"POSTGRES_PASSWORD": "x", "GPT2FT_PYTHON_IMAGE": "mirror/python:3.11-slim"},
    )
    assert mirrored["services"]["api"]["build"]["args"]["PYTHON_IMAGE"] == "mirror/python:3.11-slim"
    for dockerfile in ("Dockerfile.api", "Dockerfile.worker"):
        lines = (REPO / dockerfile).read_text().splitlines()
        assert "ARG PYTHON_IMAGE=python:3.11-slim" in lines
        assert [line for line in lines if line.startswith("FROM ")] == ["FROM ${PYTHON_IMAGE}"]


def test_the_worker_image_hands_out_no_gpu() -> None:
    """GPUs come from each container's device reservation, never from the image."""
    lines = (REPO / "Dockerfile.worker").read_text().splitlines()
    code = [line for line in lines if not line.lstrip().startswith("#")]
    assert not [line for line in code if "NVIDIA_VISIBLE_DEVICES" in line]


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


@pytest.mark.parametrize("requirements", sorted(IMAGE_CODE))
def test_each_image_installs_what_its_code_imports(requirements: str) -> None:
    """`gpt2ft migrate` died in the API image on cli/client.py's httpx: never again."""
    installed = closure(requirements_of(REQUIREMENTS / requirements))
    providers = importlib.metadata.packages_distributions()
    imports = third_party_imports(["cli"], module_level_only=True)
    imports.update(third_party_imports(IMAGE_CODE[requirements]))
    for module, where in sorted(imports.items()):
        found = {normalize(dist) for dist in providers.get(module, [])}
        assert found & installed, f"{where} imports {module}: requirements/{requirements} lacks it"


@pytest.mark.parametrize("requirements", sorted(IMAGE_CODE))
def test_each_image_has_the_celery_redis_transport(requirements: str) -> None:
    """kombu's Redis transport imports packaging: without it the API could send no job."""
    installed = closure(requirements_of(REQUIREMENTS / requirements))
    transport = closure([Requirement("kombu[redis]")]) - closure([Requirement("kombu")])
    assert transport and transport <= installed, transport - installed


def test_the_api_image_pulls_no_torch() -> None:
    api_packages = closure(requirements_of(REQUIREMENTS / "api.txt"))
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


def test_the_constraints_file_pins_everything_installed() -> None:
    """A fresh machine and the images resolve the same versions: nothing floats."""
    constraints = pins(REQUIREMENTS / "constraints.txt")
    floating = closure(requirements_of(REQUIREMENTS / "dev.txt")) - set(constraints)
    assert not floating, f"constraints.txt pins no version of {sorted(floating)}"


SHELL_SCRIPTS = [".ci/run", *sorted(str(p.relative_to(REPO)) for p in REPO.glob("scripts/**/*.sh"))]


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_shell_scripts_parse(script: str) -> None:
    result = subprocess.run(["bash", "-n", str(REPO / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def compose_command() -> list[str]:
    """`docker compose` (v2) where the plugin answers, else docker-compose (1.29)."""
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy is None:
        missing_service("neither the docker compose plugin nor docker-compose is installed")
    return [str(legacy)]


@pytest.mark.parametrize(
    "files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.cpu.yml"]]
)
def test_docker_compose_accepts_the_files(files: list[str]) -> None:
    command = compose_command() + [arg for name in files for arg in ("-f", name)]
    env = {k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"}
    missing = subprocess.run(
        [*command, "config", "-q"], capture_output=True, text=True, cwd=REPO, env=env
    )
    assert missing.returncode != 0 and "set POSTGRES_PASSWORD" in missing.stderr
    env["POSTGRES_PASSWORD"] = "x"
    result = subprocess.run([*command, "config"], capture_output=True, text=True, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    replicas = {name: services[name]["deploy"].get("replicas", 1) for name in WORKERS}
    cpu = len(files) == 2
    assert replicas == {"worker": 0 if cpu else 1, "worker-cpu": 1 if cpu else 0}
    assert "devices" in str(services["worker"]["deploy"])


def compose_config(files: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`compose -f ... config` with the real compose, env on top of a clean environment."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GPT2FT_", "POSTGRES_"))}
    command = compose_command() + [arg for name in files for arg in ("-f", name)]
    return subprocess.run(
        [*command, "config"], capture_output=True, text=True, cwd=REPO, env={**base, **env}
    )


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port): 1.29 prints "ip:port:port/tcp", v2 mappings."""
    found = []
    for port in service.get("ports", []):
        if isinstance(port, str):
            ip, host, target = port.split("/")[0].rsplit(":", 2)
            found.append((ip, int(host), int(target)))
        else:
            found.append((port["host_ip"], int(port["published"]), int(port["target"])))
    return found


def volume_sources(service: dict[str, Any]) -> list[str]:
    return [v.split(":")[0] if isinstance(v, str) else v["source"] for v in service["volumes"]]


def reservation(service: dict[str, Any]) -> list[dict[str, Any]]:
    return list(service["deploy"]["resources"]["reservations"]["devices"])


def test_one_worker_service_per_gpu(tmp_path: Path) -> None:
    """scripts/compose_gpus.py N: N copies of `worker`, each on its own GPU; the real compose
    accepts the override and keeps the devices apart."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from compose_gpus import main
    finally:
        sys.path.pop(0)
    override = tmp_path / "docker-compose.gpus.yml"
    with override.open("w") as out, contextlib.redirect_stdout(out):
        assert main(["3"]) == 0
    result = compose_config(["docker-compose.yml", str(override)], {"POSTGRES_PASSWORD": "x"})
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    gpus = {name: reservation(services[name]) for name in services if name.startswith("worker-gpu")}
    assert {name: devices[0]["device_ids"] for name, devices in gpus.items()} == {
        "worker-gpu0": ["0"], "worker-gpu1": ["1"], "worker-gpu2": ["2"],
    }  # fmt: skip
    assert all(d[0]["capabilities"] == ["gpu"] and "count" not in d[0] for d in gpus.values())
    assert services["worker"]["deploy"]["replicas"] == 0
    # Otherwise each is the worker: same image, command, environment, volume and checks.
    same = ("image", "command", "environment", "volumes", "healthcheck", "depends_on")
    for name in gpus:
        assert {k: services[name][k] for k in same} == {k: services["worker"][k] for k in same}
    # The same for a worker host's file.
    text = subprocess.run(
        [sys.executable, str(REPO / "scripts/compose_gpus.py"), "2", "--base",
         str(REPO / "docker-compose.workers.yml")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "worker-data:/data" in text and "device_ids:\n            - '1'" in text


S3_KEYS = {"GPT2FT_S3_ACCESS_KEY": "ak", "GPT2FT_S3_SECRET_KEY": "sk"}


def test_the_s3_service_is_a_profile_and_the_s3_override_points_everyone_at_it() -> None:
    compose = load_compose("docker-compose.yml", {"POSTGRES_PASSWORD": "x"})
    s3 = compose["services"]["s3"]
    assert s3["profiles"] == ["s3"] and "seaweedfs" in s3["image"]
    assert s3["command"][0] == "mini" and "ports" not in s3  # private unless the hub says
    files = ["docker-compose.yml", "docker-compose.s3.yml"]
    missing = compose_config(files, {"POSTGRES_PASSWORD": "x"})
    assert missing.returncode != 0 and "set GPT2FT_S3_ACCESS_KEY" in missing.stderr
    result = compose_config(files, {"POSTGRES_PASSWORD": "x", **S3_KEYS})
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    # `--profile s3` starts it; another store needs none (v2 leaves it out, 1.29 lists it).
    assert "s3" not in services or services["s3"]["profiles"] == ["s3"]
    for name in ("setup", "api", *WORKERS):
        env = services[name]["environment"]
        assert env["GPT2FT_STORAGE_URL"] == "s3://gpt2ft/main"
        assert env["AWS_ENDPOINT_URL"] == "http://s3:8333"
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("ak", "sk")
        assert env["REDIS_URL"] == "redis://redis:6379/0"  # the base file's, merged
    s3_env = load_compose("docker-compose.s3.yml", S3_KEYS)["services"]["s3"]["environment"]
    assert s3_env == {
        "AWS_ACCESS_KEY_ID": "ak",
        "AWS_SECRET_ACCESS_KEY": "sk",
        "S3_BUCKET": "gpt2ft",
    }


def test_a_worker_host_reaches_only_the_first_hosts_postgres_redis_and_s3() -> None:
    hub = {"POSTGRES_PASSWORD": "pw", "GPT2FT_HUB_BIND": "10.0.0.5", **S3_KEYS}
    first = compose_config(
        ["docker-compose.yml", "docker-compose.s3.yml", "docker-compose.hub.yml"], hub
    )
    assert first.returncode == 0, first.stderr
    services_of_first = yaml.safe_load(first.stdout)["services"]
    assert {"postgres", "redis"} <= set(services_of_first)
    for name, port in (("postgres", 5432), ("redis", 6379), ("s3", 8333)):
        if name in services_of_first:
            assert published(services_of_first[name]) == [("10.0.0.5", port, port)], name
    assert (
        "set GPT2FT_HUB_BIND"
        in compose_config(
            ["docker-compose.yml", "docker-compose.hub.yml"], {"POSTGRES_PASSWORD": "pw"}
        ).stderr
    )

    env = {"POSTGRES_PASSWORD": "pw", "GPT2FT_HUB": "10.0.0.5", **S3_KEYS}
    assert (
        "set GPT2FT_HUB"
        in compose_config(
            ["docker-compose.workers.yml"], {k: v for k, v in env.items() if k != "GPT2FT_HUB"}
        ).stderr
    )
    result = compose_config(["docker-compose.workers.yml"], env)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert set(services) == {"setup", "worker", "worker-cpu"}  # no database, broker or API
    for name in services:
        worker_env = services[name]["environment"]
        assert worker_env["DATABASE_URL"] == "postgresql+psycopg://gpt2ft:pw@10.0.0.5:5432/gpt2ft"
        assert worker_env["REDIS_URL"] == "redis://10.0.0.5:6379/0"
        assert worker_env["GPT2FT_STORAGE_URL"].startswith("s3://")
        assert worker_env["AWS_ENDPOINT_URL"] == "http://10.0.0.5:8333"
        # Its own volume: no folder shared with the first host.
        assert volume_sources(services[name]) == ["worker-data"]
    assert reservation(services["worker"])[0]["device_ids"] == ["0"]
    assert services["worker-cpu"]["deploy"]["replicas"] == 0
    assert services["worker"]["command"] == ["gpt2ft", "worker"]
