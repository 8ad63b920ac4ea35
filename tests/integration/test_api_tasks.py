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
CHAT = (
    b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
)


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
        ("text", {"task": "chat"}, 400, 'needs "messages" records', "training_file"),
        ("chat", {"task": "completion"}, 400, "holds chat records", "training_file"),
        ("chat+qa", {}, 400, "holds completion records", "validation_file"),
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
    contents = {"text": GOOD_JSONL, "labeled": LABELED, "qa": QA, "chat": CHAT}
    ids = [upload(api, alice, contents[name])["id"] for name in files.split("+")]
    body = {"training_file": ids[0], **extra}
    if len(ids) > 1:
        body["validation_file"] = ids[1]
    response = create(api, alice, **body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"] and error["param"] == param


def test_chat_files_infer_the_chat_task(api: TestClient, alice: dict[str, str]) -> None:
    chat = upload(api, alice, CHAT * 3, name="chat.jsonl")
    assert chat["format"] == "jsonl" and chat["records"] == 3
    job = create(api, alice, training_file=chat["id"], training_method="lora").json()
    assert job["hyperparameters"]["task"] == "chat"


def test_chat_upload_errors_name_the_line(api: TestClient, alice: dict[str, str]) -> None:
    bad = CHAT + b'{"messages": [{"role": "user", "content": "hi", "weight": 1}]}\n'
    response = api.post(
        "/v1/files",
        headers=alice,
        files={"file": ("chat.jsonl", bad)},
        data={"purpose": "fine-tune"},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (
        'chat.jsonl: line 2: "messages[0].weight" is only allowed on assistant' in error["message"]
    )
