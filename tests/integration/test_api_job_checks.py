"""Job create keeps its word: files checked at create, integrations refused, metadata kept."""

from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from shared.db.session import session_scope
from shared.db.tables import File, Job
from shared.ids import new_sortable_id, now_ts
from tests.integration.conftest import GOOD_JSONL, upload

JOBS = "/v1/fine_tuning/jobs"
QA = b'{"prompt": "Q: hi? A:", "completion": " hello"}\n' * 4


def create(api: TestClient, headers: dict[str, str], **body: Any) -> Any:
    return api.post(JOBS, headers=headers, json={"model": "gpt2-tiny", **body})


def jobs_stored() -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def results_file(owner: str) -> str:
    """A finished job's metrics CSV, as the worker stores it (purpose fine-tune-results)."""
    file_id = new_sortable_id("file")
    with session_scope() as session:
        session.add(
            File(
                id=file_id, owner=owner, filename="ftjob-x_results.csv",
                purpose="fine-tune-results", bytes=40, format="csv", records=2,
                created_at=now_ts(),
            )
        )  # fmt: skip
    return file_id


@pytest.mark.parametrize("param", ["training_file", "validation_file"])
def test_a_results_file_is_not_training_data(
    api: TestClient, alice: dict[str, str], param: str
) -> None:
    results = results_file("alice")
    files = {"training_file": upload(api, alice, GOOD_JSONL)["id"], param: results}
    response = create(api, alice, **files)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["code"] == "invalid_file_purpose"
    assert results in error["message"] and "'fine-tune-results'" in error["message"]
    assert jobs_stored() == 0


def test_validation_records_must_match_the_training_records(
    api: TestClient, alice: dict[str, str]
) -> None:
    text, qa = upload(api, alice, GOOD_JSONL)["id"], upload(api, alice, QA)["id"]
    # causal_lm trains on any records, so only the pairing itself can refuse this.
    response = create(api, alice, training_file=text, validation_file=qa, task="causal_lm")
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "validation_file"
    assert error["message"].startswith(
        "validation_file holds completion records (prompt, completion) but training_file "
        "holds text records (text)"
    )
    assert jobs_stored() == 0
    other_qa = upload(api, alice, QA)["id"]
    assert create(api, alice, training_file=qa, validation_file=other_qa).status_code == 200


def test_integrations_are_refused_naming_the_field(api: TestClient, alice: dict[str, str]) -> None:
    training = upload(api, alice, GOOD_JSONL)["id"]
    wandb = [{"type": "wandb", "wandb": {"project": "gpt2"}}]
    response = create(api, alice, training_file=training, integrations=wandb)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "integrations" and error["message"].startswith("integrations:")
    assert jobs_stored() == 0
    # An empty list asks for nothing: accepted.
    assert create(api, alice, training_file=training, integrations=[]).status_code == 200


def test_metadata_is_stored_returned_and_listed(api: TestClient, alice: dict[str, str]) -> None:
    training = upload(api, alice, GOOD_JSONL)["id"]
    metadata = {"team": "nlp", "run": "7"}
    job = create(api, alice, training_file=training, metadata=metadata).json()
    assert job["metadata"] == metadata
    assert api.get(f"{JOBS}/{job['id']}", headers=alice).json()["metadata"] == metadata
    listed = api.get(JOBS, headers=alice).json()["data"]
    assert [j["metadata"] for j in listed] == [metadata]
    with session_scope() as session:
        row = session.get(Job, job["id"])
        assert row is not None and row.job_metadata == metadata


@pytest.mark.parametrize(
    ("metadata", "param", "fragment"),
    [
        ({f"k{i}": "v" for i in range(17)}, "metadata", "at most 16 items"),
        ({"k" * 65: "v"}, "metadata." + "k" * 65, "at most 64 characters"),
        ({"k": "v" * 513}, "metadata.k", "at most 512 characters"),
        ({"k": 3}, "metadata.k", "valid string"),
    ],
)
def test_metadata_beyond_openais_limits_is_refused(
    api: TestClient, alice: dict[str, str], metadata: dict[str, Any], param: str, fragment: str
) -> None:
    training = upload(api, alice, GOOD_JSONL)["id"]
    response = create(api, alice, training_file=training, metadata=metadata)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == param and fragment in error["message"]
    assert jobs_stored() == 0
    at_limits = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    assert create(api, alice, training_file=training, metadata=at_limits).status_code == 200


def listed(api: TestClient, headers: dict[str, str], query: str) -> list[str]:
    response = api.get(f"{JOBS}?{query}", headers=headers)
    assert response.status_code == 200, response.text
    return [job["metadata"] and job["metadata"].get("name") for job in response.json()["data"]]


def test_lists_filter_by_metadata_as_openai_does(
    api: TestClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    training = upload(api, alice, GOOD_JSONL)["id"]
    odd = 'a.b "c" $[0]'  # JSON-path characters must not change what a key means
    for metadata in (
        {"name": "first", "team": "nlp", odd: "x"},
        {"name": "second", "team": "nlp", "run": ""},
        {"name": "third", "team": "vision"},
        None,
    ):
        job = create(api, alice, training_file=training, metadata=metadata).json()
        api.post(f"{JOBS}/{job['id']}/cancel", headers=alice)  # stay under the job quota
    assert listed(api, alice, "metadata[team]=nlp") == ["second", "first"]
    assert listed(api, alice, "metadata[team]=nlp&metadata[name]=first") == ["first"]
    assert listed(api, alice, "metadata[team]=nlp&metadata[name]=third") == []
    assert listed(api, alice, "metadata[run]=") == ["second"]
    assert listed(api, alice, "metadata[a.b]=x") == []
    assert listed(api, alice, 'metadata[a.b "c" $[0]]=x') == ["first"]
    assert listed(api, alice, "metadata=null") == [None]
    assert listed(api, alice, "metadata[team]=nlp&limit=1") == ["second"]
    assert listed(api, bob, "metadata[team]=nlp") == []
    both = api.get(f"{JOBS}?metadata=null&metadata[team]=nlp", headers=alice)
    assert both.status_code == 400 and both.json()["error"]["param"] == "metadata"


def test_the_sdk_sends_metadata_and_filters_by_it(api: TestClient, alice: dict[str, str]) -> None:
    key = alice["Authorization"].removeprefix("Bearer ")
    client = openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=api)
    training = client.files.create(file=("train.jsonl", GOOD_JSONL), purpose="fine-tune").id
    tagged = client.fine_tuning.jobs.create(
        model="gpt2-tiny", training_file=training, metadata={"team": "nlp"}
    )
    assert tagged.metadata == {"team": "nlp"}
    client.fine_tuning.jobs.create(model="gpt2-tiny", training_file=training)
    found = client.fine_tuning.jobs.list(metadata={"team": "nlp"})
    assert [job.id for job in found] == [tagged.id]
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(
            model="gpt2-tiny", training_file=training,
            integrations=[{"type": "wandb", "wandb": {"project": "gpt2"}}],
        )  # fmt: skip
    assert refused.value.param == "integrations"
