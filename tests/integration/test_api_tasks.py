"""Task extensions at job create: inferred from the file, stored in Job.options, checked."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from shared.db.session import session_scope
from shared.db.tables import Job
from tests.integration.conftest import GOOD_JSONL, upload

JOBS = "/v1/fine_tuning/jobs"
LABELED = b'{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"}\n'
QA = b'{"prompt": "Q: hi? A:", "completion": " hello"}\n'


def create(api: TestClient, headers: dict[str, str], **body: Any) -> Any:
    return api.post(JOBS, headers=headers, json={"model": "gpt2-tiny", **body})


def test_task_is_inferred_and_stored(api: TestClient, alice: dict[str, str]) -> None:
    labeled = upload(api, alice, LABELED)
    assert labeled["format"] == "jsonl" and labeled["records"] == 2  # the API shows the container
    job = create(api, alice, training_file=labeled["id"], max_length=64).json()
    assert job["hyperparameters"]["task"] == "classification"
    assert job["hyperparameters"]["max_length"] == 64
    with session_scope() as session:
        row = session.get(Job, job["id"])
        assert row is not None and row.options is not None
        assert row.options["task"] == "classification" and row.options["max_length"] == 64

    # LoRA trains classifiers too (a SEQ_CLS adapter plus the score head).
    lora = create(api, alice, training_file=labeled["id"], training_method="lora")
    assert lora.status_code == 200, lora.text
    assert lora.json()["training_method"] == "lora"

    qa = upload(api, alice, QA, name="qa.jsonl")
    job = create(api, alice, training_file=qa["id"]).json()
    assert job["hyperparameters"]["task"] == "completion"
    # Any records have text a causal LM can model: the override is allowed.
    job = create(api, alice, training_file=qa["id"], task="causal_lm", packing=False).json()
    assert job["hyperparameters"]["task"] == "causal_lm"
    assert job["hyperparameters"]["packing"] is False


@pytest.mark.parametrize(
    ("files", "extra", "status", "fragment", "param"),
    [
        ("text", {"task": "classification"}, 400, 'needs "text", "label" records', "training_file"),
        ("text", {"task": "regression"}, 422, "task", "task"),
        ("text", {"max_length": 4}, 422, "max_length", "max_length"),
        ("labeled+qa", {}, 400, "holds completion records", "validation_file"),
    ],
)  # fmt: skip
def test_task_errors(
    api: TestClient,
    alice: dict[str, str],
    files: str,
    extra: dict[str, Any],
    status: int,
    fragment: str,
    param: str,
) -> None:
    contents = {"text": GOOD_JSONL, "labeled": LABELED, "qa": QA}
    ids = [upload(api, alice, contents[name])["id"] for name in files.split("+")]
    body = {"training_file": ids[0], **extra}
    if len(ids) > 1:
        body["validation_file"] = ids[1]
    response = create(api, alice, **body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"] and error["param"] == param
