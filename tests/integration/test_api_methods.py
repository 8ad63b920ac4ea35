"""Method and hyperparameter extensions at job create: 422s, job fields, dry-run plans."""

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from shared.db.session import session_scope
from shared.db.tables import Job
from tests.integration.conftest import upload

JOBS = "/v1/fine_tuning/jobs"
CORPUS = b"".join(
    b'{"text": "line %d of a tiny corpus about foxes and dogs"}\n' % i for i in range(40)
)


@pytest.fixture
def training_file(api: TestClient, alice: dict[str, str]) -> str:
    return str(upload(api, alice, CORPUS)["id"])


def create(api: TestClient, headers: dict[str, str], **body: Any) -> Any:
    return api.post(JOBS, headers=headers, json={"model": "gpt2-tiny", **body})


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"lr_scheduler": "step"}, "lr_scheduler", "'linear', 'cosine' or 'constant'"),
        ({"hyperparameters": {"max_grad_norm": 0}}, "hyperparameters.max_grad_norm", "than 0"),
        ({"gradient_accumulation_steps": 1000}, "gradient_accumulation_steps", "256"),
        ({"eval_every_steps": 0}, "eval_every_steps", "greater than or equal to 1"),
        ({"early_stopping_patience": -1}, "early_stopping_patience", "greater than or equal to 1"),
        ({"keep": "first"}, "keep", "'best' or 'last'"),
        ({"training_method": "qlora"}, "training_method", "'full', 'transfer' or 'lora'"),
        ({"training_method": "lora", "lora": {"r": 0}}, "lora.r", "greater than or equal to 1"),
        ({"lora": {"target_modules": ["q_proj"]}}, "lora.target_modules.0", "c_attn"),
        ({"sample_prompts": ["a"] * 9}, "sample_prompts", "at most 8"),
    ],
)  # fmt: skip
def test_bad_extensions_are_422_naming_the_field(
    api: TestClient, alice: dict[str, str], training_file: str, body: dict, param: str,
    fragment: str,
) -> None:  # fmt: skip
    response = create(api, alice, training_file=training_file, **body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert fragment in error["message"], error["message"]
    with session_scope() as session:
        assert session.scalars(select(Job)).first() is None


def test_job_shows_method_and_resolved_extensions(
    api: TestClient, alice: dict[str, str], training_file: str
) -> None:
    response = create(
        api, alice, training_file=training_file, training_method="lora",
        lora={"r": 4, "target_modules": ["c_attn", "c_fc"]}, lr_scheduler="cosine",
        keep="last", sample_prompts=["Once upon"],
    )  # fmt: skip
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["training_method"] == "lora"
    assert job["lora"] == {"r": 4, "alpha": 16, "dropout": 0.05,
                           "target_modules": ["c_attn", "c_fc"]}  # fmt: skip
    assert job["sample_prompts"] == ["Once upon"]
    assert job["hyperparameters"]["lr_scheduler"] == "cosine"
    assert job["hyperparameters"]["keep"] == "last"
    with session_scope() as session:
        row = session.get(Job, job["id"])
        assert row is not None and row.options["training_method"] == "lora"


def test_dry_run_plans_in_a_worker_and_stores_nothing(
    api: TestClient, alice: dict[str, str], training_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.settings import get_settings
    from worker.dry_run import handle_plan

    monkeypatch.setenv("GPT2FT_COMPLETION_TIMEOUT_SECONDS", "1")
    get_settings.cache_clear()
    started = time.monotonic()
    response = create(api, alice, training_file=training_file, dry_run=True)
    assert response.status_code == 503, response.text
    assert time.monotonic() - started < 5
    with session_scope() as session:
        assert session.scalars(select(Job)).first() is None

    # What the worker answers for the same request (the API forwards it as is).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    request = {"id": "ftjob-dry", "owner": "alice", "model": "gpt2-tiny",
               "training_file": training_file, "seed": 5,
               "hyperparameters": {"block_size": 32, "batch_size": 4, "n_epochs": 2},
               "options": {"training_method": "transfer", "trainable_layers": 1}}  # fmt: skip
    answer = handle_plan(request)
    plan = answer["plan"]
    assert plan["block_size"] == 32 and plan["batch_size"] == 4 and plan["n_epochs"] == 2
    assert plan["train_tokens"] == plan["train_blocks"] * 32 > 0
    assert plan["steps_per_epoch"] == -(-plan["train_blocks"] // 4)
    assert plan["total_steps"] == 2 * plan["steps_per_epoch"]
    assert 0 < plan["trainable_parameters"] < plan["total_parameters"]
    memory = plan["memory_estimate"]
    assert memory["total_bytes"] > memory["weights_bytes"] > 0 and memory["micro_batch_size"] == 4
    assert answer["hyperparameters"]["gradient_accumulation_steps"] == 1
    assert answer["fits"] is True

    request["hyperparameters"] = {"block_size": 4096}
    assert handle_plan(request)["error"]["param"] == "hyperparameters.block_size"
