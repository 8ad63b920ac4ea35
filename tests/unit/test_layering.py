"""docs/architecture.md's layering, checked on every import statement: api → shared ← worker."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "api": {"torch", "transformers", "peft", "worker", "safetensors"},
    "shared": {"torch", "transformers", "peft", "fastapi", "starlette", "celery", "api", "worker"},
    "worker": {"api", "fastapi", "starlette"},
    "worker/training": {"celery", "sqlalchemy", "fastapi", "httpx", "redis", "api"},
}


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_stay_in_their_layer(package: str) -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted(imported_roots(path) & FORBIDDEN[package])
        for path in (REPO / package).rglob("*.py")
    }
    assert {name: bad for name, bad in offenders.items() if bad} == {}
