"""What test_api_* leave out: the cross-owner matrix, NUL bytes, hostile names, every bound."""

import types
import typing
from typing import Any

from fastapi.testclient import TestClient
from pydantic import BaseModel
from sqlalchemy import func, select

from shared.db.session import session_scope
from shared.db.tables import File, Job
from shared.spec import Hyperparameters, TaskOptions
from shared.storage import file_key, get_storage
from tests.integration.conftest import GOOD_JSONL, upload
from tests.integration.test_api_files import stored_files
from tests.integration.test_api_models import finished_job, is_published

JOBS = "/v1/fine_tuning/jobs"


def test_another_owners_objects_are_404_and_unlisted(
    api: TestClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    mine = finished_job(api, alice, "alice")
    job_id, model_id = mine["job_id"], mine["model_id"]
    ckpt = api.get(f"{JOBS}/{job_id}/checkpoints", headers=alice).json()["data"][0]
    file_id = api.get(f"{JOBS}/{job_id}", headers=alice).json()["training_file"]
    ckpt_model = ckpt["fine_tuned_model_checkpoint"]

    reads = [
        f"/v1/files/{file_id}",
        f"/v1/files/{file_id}/content",
        f"{JOBS}/{job_id}",
        f"{JOBS}/{job_id}/events",
        f"{JOBS}/{job_id}/checkpoints",
        f"/v1/models/{model_id}",
        f"/v1/models/{ckpt_model}",
    ]
    for path in reads:
        response = api.get(path, headers=bob)
        assert response.status_code == 404, path
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    for action in ("cancel", "pause", "resume"):
        assert api.post(f"{JOBS}/{job_id}/{action}", headers=bob).status_code == 404
    for path in (f"/v1/files/{file_id}", f"/v1/models/{model_id}", f"/v1/models/{ckpt_model}"):
        assert api.delete(path, headers=bob).status_code == 404, path
    for model in (model_id, ckpt_model):
        response = api.post("/v1/completions", headers=bob, json={"model": model, "prompt": "x"})
        assert response.status_code == 404, response.text
        assert model in response.json()["error"]["message"]
    # Nor can bob train on alice's file or page past alice's ids.
    body = {"model": "gpt2-tiny", "training_file": file_id}
    assert api.post(JOBS, headers=bob, json=body).status_code == 404
    # A cursor at alice's job reads exactly like a cursor at no job at all.
    theirs = api.get(JOBS, headers=bob, params={"after": job_id})
    nobody = api.get(JOBS, headers=bob, params={"after": "ftjob-nobody"})
    assert theirs.status_code == nobody.status_code
    assert theirs.json()["error"]["message"].replace(job_id, "X") == nobody.json()["error"][
        "message"
    ].replace("ftjob-nobody", "X")

    upload(api, bob, GOOD_JSONL)
    listed = {
        "files": api.get("/v1/files", headers=bob).json()["data"],
        "jobs": api.get(JOBS, headers=bob).json()["data"],
        "models": api.get("/v1/models", headers=bob).json()["data"],
    }
    shown = {item["id"] for items in listed.values() for item in items}
    assert not {file_id, job_id, model_id, ckpt_model} & shown
    assert len(listed["files"]) == 1
    # Alice still has everything.
    assert api.get(f"/v1/models/{model_id}", headers=alice).status_code == 200
    assert is_published(mine["model_path"])


def stored(owner: str) -> tuple[int, list[str]]:
    with session_scope() as session:
        rows = int(session.scalar(select(func.count()).where(File.owner == owner)) or 0)
    return rows, stored_files()


def test_nul_bytes_are_400_naming_the_line(api: TestClient, alice: dict[str, str]) -> None:
    before = stored("alice")
    for name, content in (
        ("a.txt", b"fine\nbin\x00ary\n"),
        ("a.jsonl", b'{"text": "ok"}\n{"text": "a\x00b"}\n'),
    ):
        response = api.post(
            "/v1/files",
            headers=alice,
            files={"file": (name, content)},
            data={"purpose": "fine-tune"},
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert "line 2" in error["message"] and "NUL" in error["message"], error
        assert error["param"] == "file"
    assert stored("alice") == before


def test_hostile_filename_is_only_data(api: TestClient, alice: dict[str, str]) -> None:
    name = "../../etc/passwd.txt"
    made = upload(api, alice, b"root:x:0:0\n", name=name)
    assert made["filename"] == "passwd.txt"  # the base name only
    assert get_storage().list_keys("files") == [file_key(str(made["id"]))]
    assert not any("passwd" in name for name in stored_files())
    assert api.get(f"/v1/files/{made['id']}/content", headers=alice).content == b"root:x:0:0\n"


def walk(tp: Any, meta: list[Any], bounds: dict[str, Any], kinds: set[type]) -> None:
    """Collect numeric bounds through Annotated and unions (e.g. int in 1..100 | "auto")."""
    if typing.get_origin(tp) is typing.Annotated:
        base, *extra = typing.get_args(tp)
        walk(base, meta + extra, bounds, kinds)
    elif typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            walk(arg, meta, bounds, kinds)
    elif tp in (int, float):
        kinds.add(tp)
        for item in meta:
            for m in getattr(item, "metadata", [item]):
                for attr in ("ge", "gt", "le", "lt"):
                    if getattr(m, attr, None) is not None:
                        bounds[attr] = getattr(m, attr)


def numeric_bounds(model: type[BaseModel]) -> dict[str, dict[str, Any]]:
    """For each numeric field of model, its ge/gt/le/lt bounds and whether it is an int."""
    found: dict[str, dict[str, Any]] = {}
    for name, info in model.model_fields.items():
        bounds: dict[str, Any] = {}
        kinds: set[type] = set()
        walk(info.annotation, list(info.metadata), bounds, kinds)
        if kinds and bounds:
            found[name] = {"int": kinds == {int}, **bounds}
    return found


def out_of_range(bounds: dict[str, Any]) -> list[Any]:
    step = 1 if bounds["int"] else 0.5
    values = []
    if "ge" in bounds:
        values.append(bounds["ge"] - step)
    if "gt" in bounds:
        values.append(bounds["gt"])
    if "le" in bounds:
        values.append(bounds["le"] + step)
    if "lt" in bounds:
        values.append(bounds["lt"])
    return values


CASES = [
    (f"hyperparameters.{name}", {"hyperparameters": {name: value}})
    for name, bounds in numeric_bounds(Hyperparameters).items()
    for value in out_of_range(bounds)
] + [
    (name, {name: value})
    for name, bounds in numeric_bounds(TaskOptions).items()
    for value in out_of_range(bounds)
]


def test_every_numeric_job_field_out_of_range_is_422(
    api: TestClient, alice: dict[str, str]
) -> None:
    assert len(CASES) >= 20, CASES  # the walk really found the bounds
    file_id = upload(api, alice, GOOD_JSONL)["id"]
    cases = CASES + [("seed", {"seed": -1}), ("seed", {"seed": 2**31})]
    wrong = []
    for param, extra in cases:
        body = {"model": "gpt2-tiny", "training_file": file_id, **extra}
        response = api.post(JOBS, headers=alice, json=body)
        error = response.json().get("error") or {}
        leaf = param.rsplit(".", 1)[-1]
        if response.status_code != 422 or error.get("param") != param:
            wrong.append((extra, response.status_code, error))
        elif leaf not in error["message"]:
            wrong.append((extra, "message does not name the field", error["message"]))
    assert not wrong, wrong
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
