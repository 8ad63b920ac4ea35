"""The official openai SDK drives the API and parses every object it returns."""

import openai
import pytest
from fastapi.testclient import TestClient

from tests.integration.conftest import GOOD_JSONL


def test_openai_sdk_round_trip(api: TestClient, alice: dict[str, str]) -> None:
    key = alice["Authorization"].removeprefix("Bearer ")
    client = openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=api)

    uploaded = client.files.create(file=("train.jsonl", GOOD_JSONL), purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.bytes == len(GOOD_JSONL)
    assert [f.id for f in client.files.list()] == [uploaded.id]
    assert client.files.content(uploaded.id).content == GOOD_JSONL

    job = client.fine_tuning.jobs.create(
        model="gpt2-tiny",
        training_file=uploaded.id,
        hyperparameters={"n_epochs": 2},
        suffix="sdk",
        extra_body={"block_size": 64},
    )
    assert job.status == "queued" and job.hyperparameters.n_epochs == 2
    assert job.model_extra and job.model_extra["steps_completed"] == 0
    assert client.fine_tuning.jobs.retrieve(job.id).id == job.id
    assert [j.id for j in client.fine_tuning.jobs.list(limit=5)] == [job.id]
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    events = list(client.fine_tuning.jobs.list_events(job.id))
    assert [e.message for e in events] == ["Job cancelled"] and events[0].level == "info"
    assert list(client.fine_tuning.jobs.checkpoints.list(job.id)) == []
    assert "gpt2-tiny" in [m.id for m in client.models.list()]

    with pytest.raises(openai.NotFoundError) as missing:
        client.fine_tuning.jobs.retrieve("ftjob-missing")
    assert "No such job: ftjob-missing" in str(missing.value)
    with pytest.raises(openai.UnprocessableEntityError):
        client.fine_tuning.jobs.create(
            model="gpt2-tiny", training_file=uploaded.id, hyperparameters={"n_epochs": 0}
        )
