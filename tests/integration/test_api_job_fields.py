"""Every job option reaches the job as given: at the top level or in hyperparameters."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from shared.db.session import session_scope
from shared.db.tables import Job
from shared.spec import ExtensionHyperparameters, MethodOptions, TaskOptions
from tests.integration.conftest import GOOD_JSONL, upload

JOBS = "/v1/fine_tuning/jobs"

# A valid, non-default value for every option: a new field without one here fails the test.
HYPERPARAMETER_SAMPLES: dict[str, Any] = {
    "validation_split": 0.2,
    "warmup_ratio": 0.1,
    "weight_decay": 0.0,
    "checkpoint_every_steps": 5,
    "keep_checkpoints": 3,
    "lr_scheduler": "cosine",
    "max_grad_norm": 0.5,
    "eval_every_steps": 3,
    "early_stopping_patience": 2,
    "keep": "last",
    "gradient_checkpointing": True,
    "n_gpus": 2,
    "learning_rate": 0.001,
    "block_size": 64,
    "gradient_accumulation_steps": 2,
}
OPTION_SAMPLES: dict[str, Any] = {
    "task": "causal_lm",
    "packing": False,
    "max_length": 128,
    "training_method": "transfer",
    "trainable_layers": 1,
    "lora": {"r": 4},
    "sample_prompts": ["Once upon"],
}


@pytest.fixture
def training_file(api: TestClient, alice: dict[str, str]) -> str:
    return str(upload(api, alice, GOOD_JSONL)["id"])


def create(api: TestClient, headers: dict[str, str], **body: Any) -> Any:
    return api.post(JOBS, headers=headers, json={"model": "gpt2-tiny", **body})


def stored(job_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    with session_scope() as session:
        row = session.get(Job, job_id)
        assert row is not None
        return dict(row.hyperparameters), dict(row.options or {})


def test_samples_cover_every_option() -> None:
    assert set(HYPERPARAMETER_SAMPLES) == set(ExtensionHyperparameters.model_fields)
    assert set(OPTION_SAMPLES) == set(TaskOptions.model_fields) | set(MethodOptions.model_fields)


def test_each_extension_hyperparameter_top_level_or_nested(
    api: TestClient, alice: dict[str, str], training_file: str
) -> None:
    for name, value in HYPERPARAMETER_SAMPLES.items():
        for body in ({name: value}, {"hyperparameters": {name: value}}):
            response = create(api, alice, training_file=training_file, **body)
            assert response.status_code == 200, (body, response.text)
            job = response.json()
            assert job["hyperparameters"][name] == value, body
            assert stored(job["id"])[0] == {name: value}, body
            api.post(f"{JOBS}/{job['id']}/cancel", headers=alice)  # stay under the job quota


def test_each_task_and_method_option_is_stored(
    api: TestClient, alice: dict[str, str], training_file: str
) -> None:
    response = create(api, alice, training_file=training_file, **OPTION_SAMPLES)
    assert response.status_code == 200, response.text
    job = response.json()
    hyperparameters, options = stored(job["id"])
    assert hyperparameters == {} and options == OPTION_SAMPLES
    assert job["training_method"] == "transfer" and job["trainable_layers"] == 1
    assert job["sample_prompts"] == ["Once upon"]
    shown = job["hyperparameters"]
    assert shown["packing"] is False and shown["max_length"] == 128


def test_an_option_given_twice_must_agree(
    api: TestClient, alice: dict[str, str], training_file: str
) -> None:
    same = create(
        api, alice, training_file=training_file, warmup_ratio=0.1,
        hyperparameters={"warmup_ratio": 0.1, "n_epochs": 1},
    )  # fmt: skip
    assert same.status_code == 200, same.text
    assert stored(same.json()["id"])[0] == {"warmup_ratio": 0.1, "n_epochs": 1}
    clash = create(
        api, alice, training_file=training_file, warmup_ratio=0.2,
        hyperparameters={"warmup_ratio": 0.1},
    )  # fmt: skip
    assert clash.status_code == 422
    error = clash.json()["error"]
    assert error["param"] == "warmup_ratio"
    assert "conflicts with hyperparameters.warmup_ratio" in error["message"]


def test_task_and_method_options_are_top_level_only(
    api: TestClient, alice: dict[str, str], training_file: str
) -> None:
    response = create(api, alice, training_file=training_file, hyperparameters={"packing": False})
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "hyperparameters.packing"


def test_explicit_null_counts_as_not_given(
    api: TestClient, alice: dict[str, str], training_file: str
) -> None:
    response = create(
        api, alice, training_file=training_file, learning_rate=None, lora=None,
        hyperparameters={"learning_rate": 0.002},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    hyperparameters, options = stored(response.json()["id"])
    assert hyperparameters == {"learning_rate": 0.002} and "lora" not in options
