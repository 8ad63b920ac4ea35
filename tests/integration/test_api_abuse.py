"""Hostile input over HTTP (SQLite and Postgres): NUL characters, bad uploads, odd names."""

import json
import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import func, select

from shared.db.session import session_scope
from shared.db.tables import File, Job
from shared.settings import get_settings
from shared.storage import checkpoint_prefix, get_storage
from tests.integration.conftest import GOOD_JSONL, upload
from tests.integration.test_api_files import stored_files as stored_objects

JOBS = "/v1/fine_tuning/jobs"
# %00 in a URL is a NUL character once decoded (httpx refuses a raw one).
NUL_PATHS = [
    ("GET", "/v1/files/file-%00abc"),
    ("GET", "/v1/files/file-%00abc/content"),
    ("DELETE", "/v1/files/file-%00abc"),
    ("GET", f"{JOBS}/ftjob-%00abc"),
    ("POST", f"{JOBS}/ftjob-%00abc/cancel"),
    ("POST", f"{JOBS}/ftjob-%00abc/pause"),
    ("POST", f"{JOBS}/ftjob-%00abc/resume"),
    ("GET", f"{JOBS}/ftjob-%00abc/events"),
    ("GET", f"{JOBS}/ftjob-%00abc/checkpoints"),
    ("GET", f"{JOBS}/ftjob-%00abc/metrics"),
    ("GET", "/v1/models/ft:gpt2-tiny:alice::%00x"),
    ("GET", "/v1/models/ft:gpt2-tiny:alice::%00x/content"),
    ("DELETE", "/v1/models/ft:gpt2-tiny:alice::%00x"),
    ("GET", "/v1/files?after=file-%00x"),
    ("GET", "/v1/files?purpose=fine-%00tune"),
    ("GET", f"{JOBS}?after=ftjob-%00x"),
    ("GET", f"{JOBS}/ftjob-x/events?after=ftevent-%00x"),
    ("GET", f"{JOBS}/ftjob-x/checkpoints?after=ftckpt-%00x"),
]


def post_file(client: TestClient, headers: dict[str, str], name: str, content: bytes) -> Response:
    """POST /v1/files with purpose fine-tune; the response, whatever it is."""
    return client.post(
        "/v1/files",
        headers=headers,
        files={"file": (name, content)},
        data={"purpose": "fine-tune"},
    )


def stored_files(owner: str) -> tuple[int, list[str]]:
    """(rows, files on disk): what a refused upload must not change."""
    with session_scope() as session:
        count = int(session.scalar(select(func.count()).where(File.owner == owner)) or 0)
    return count, stored_objects()


@pytest.mark.parametrize(("method", "path"), NUL_PATHS)
def test_nul_in_ids_and_query_parameters_is_400_or_404(
    api: TestClient, alice: dict[str, str], method: str, path: str
) -> None:
    response = api.request(method, path, headers=alice)
    assert response.status_code in (400, 404), response.text
    assert "error" in response.json()


def test_nul_in_body_names_is_400_or_404(api: TestClient, alice: dict[str, str]) -> None:
    file_id = upload(api, alice, GOOD_JSONL)["id"]
    bodies = [
        (JOBS, {"model": "gpt2-tiny\x00", "training_file": file_id}),
        (JOBS, {"model": "gpt2-tiny", "training_file": file_id + "\x00"}),
        (JOBS, {"model": "gpt2-tiny", "training_file": file_id, "validation_file": "f\x00"}),
        (JOBS, {"model": "gpt2-tiny", "training_file": file_id, "metadata": {"k": "v\x00"}}),
        ("/v1/completions", {"model": "gpt2-tiny\x00", "prompt": "hi"}),
        ("/v1/completions", {"model": "ft:gpt2-tiny:alice::ftjob-\x00", "prompt": "hi"}),
        ("/v1/classifications", {"model": "ft:x\x00", "input": "hi"}),
    ]
    for path, body in bodies:
        response = api.post(path, headers=alice, json=body)
        assert response.status_code in (400, 404), (body, response.text)
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(File)) == 1


def post_upload(
    client: TestClient, headers: dict[str, str], filename: str, content: bytes
) -> Response:
    """A multipart upload built by hand: httpx would percent-encode odd bytes in the name."""
    boundary = "gpt2ftboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
            f"fine-tune\r\n--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    content_type = f"multipart/form-data; boundary={boundary}"
    return client.post("/v1/files", headers={**headers, "Content-Type": content_type}, content=body)


def test_nul_and_paths_in_upload_file_names_are_cleaned(
    api: TestClient, alice: dict[str, str]
) -> None:
    for sent, kept in [
        ("../../etc/train.jsonl", "train.jsonl"),
        ("..\\..\\win\\train.jsonl", "train.jsonl"),
        ("tr\x00ain.jsonl", "train.jsonl"),
        ("evil\u202elmth.jsonl", "evillmth.jsonl"),
        ("/", None),
    ]:
        response = post_upload(api, alice, sent, GOOD_JSONL)
        if kept is None:
            assert response.status_code == 400, response.text
            continue
        assert response.status_code == 200, response.text
        assert response.json()["filename"] == kept
        listed = api.get(f"/v1/files/{response.json()['id']}", headers=alice).json()
        assert listed["filename"] == kept


BAD_UPLOADS = [
    # The csv module's own field limit (131072) is below the documented record limit.
    ("big.csv", b"text,label\nok,a\n" + b'"' + b"x" * 1_000_001 + b'",b\n', "line 3",
     "over the limit of 1000000"),
    ("cr.csv", b"text,label\nok,a\nhello\rworld,b\n", "line 3", "carriage return"),
    ("int.jsonl", b'{"text": "a", "label": 1}\n{"text": "b", "label": ' + b"9" * 5000 + b"}\n",
     "line 2", "5000 digits"),
    ("deep.jsonl", b'{"text": "a"}\n{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
     "line 2", "nests JSON too deeply"),
    ("lone.jsonl", b'{"text": "a"}\n{"text": "x\\ud800y"}\n', "line 2", "lone surrogate"),
    ("key.jsonl", b'{"text": "a", "\\udfff": "b"}\n', "line 1", "unknown field"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "content", "line", "words"), BAD_UPLOADS)
def test_bad_uploads_are_400_naming_the_line_and_store_nothing(
    api: TestClient, alice: dict[str, str], name: str, content: bytes, line: str, words: str
) -> None:
    before = stored_files("alice")
    response = post_file(api, alice, name, content)
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert message.startswith(f"{name}: {line}: ") and words in message, message
    assert len(message) < 400
    assert stored_files("alice") == before


def test_record_count_limit(
    api: TestClient, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert get_settings().max_records == 1_000_000
    monkeypatch.setenv("GPT2FT_MAX_RECORDS", "20")
    get_settings.cache_clear()
    assert upload(api, alice, GOOD_JSONL)["records"] == 20
    before = stored_files("alice")
    response = post_file(api, alice, "more.jsonl", GOOD_JSONL + b'{"text": "one more"}\n')
    assert response.status_code == 400
    assert "more than 20 records" in response.text and "GPT2FT_MAX_RECORDS" in response.text
    assert stored_files("alice") == before


def test_422_does_not_echo_the_whole_input(api: TestClient, alice: dict[str, str]) -> None:
    body = {"model": "gpt2-tiny", "prompt": "hi", "max_tokens": "x" * 900_000}
    response = api.post("/v1/completions", headers=alice, json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "max_tokens"
    assert "xxxxx" in error["message"] and len(response.content) < 1000
    deep = {"model": "gpt2-tiny", "metadata": {"k" * 500_000: "v"}, "training_file": "f"}
    response = api.post(JOBS, headers=alice, json=deep)
    assert response.status_code in (400, 404, 422) and len(response.content) < 1000


def test_classification_labels_are_capped(
    api: TestClient, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert get_settings().max_labels == 1000
    monkeypatch.setenv("GPT2FT_MAX_LABELS", "3")
    get_settings.cache_clear()
    three = b"".join(b'{"text": "t%d", "label": "c%d"}\n' % (i, i % 3) for i in range(9))
    assert upload(api, alice, three)["records"] == 9
    before = stored_files("alice")
    four = three + b'{"text": "t", "label": "c3"}\n'
    response = post_file(api, alice, "four.jsonl", four)
    assert response.status_code == 400
    assert "record 10" in response.text and "GPT2FT_MAX_LABELS" in response.text
    long_label = b'{"text": "t", "label": "%s"}\n' % (b"z" * 101)
    response = post_file(api, alice, "long.jsonl", three + long_label)
    assert response.status_code == 400 and "line 10" in response.text
    assert "at most 100" in response.text
    assert stored_files("alice") == before


def test_stop_sequences_and_generated_tokens_are_bounded(
    api: TestClient, alice: dict[str, str]
) -> None:
    base = {"model": "gpt2-tiny", "prompt": "hi"}
    for stop in ["x" * 65, ["a", "b", "c", "d", "e"], ["ok", "y" * 65]]:
        response = api.post("/v1/completions", headers=alice, json={**base, "stop": stop})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["param"] == "stop"
    assert get_settings().max_generated_tokens_per_request == 8192
    too_many = {**base, "prompt": ["a"] * 5, "n": 2, "max_tokens": 1000}
    response = api.post("/v1/completions", headers=alice, json=too_many)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "too_many_tokens" and error["param"] == "max_tokens"
    assert "10000 tokens" in error["message"] and "8192" in error["message"]


def job_with_status(api: TestClient, headers: dict[str, str], status: str) -> str:
    """A gpt2-tiny job, its status then set in the database as a worker would."""
    file_id = upload(api, headers, GOOD_JSONL)["id"]
    job = api.post(JOBS, headers=headers, json={"model": "gpt2-tiny", "training_file": file_id})
    assert job.status_code == 200, job.text
    with session_scope() as session:
        row = session.get(Job, job.json()["id"])
        assert row is not None
        row.status = status
    return str(job.json()["id"])


def read_stream(
    api: TestClient, headers: dict[str, str], job_id: str, within: float = 20
) -> tuple[int, str]:
    """(status, whole text) of the job's event stream; fails if it has not ended within."""
    out: dict[str, Any] = {}

    def run() -> None:
        params = {"stream": "true"}
        with api.stream("GET", f"{JOBS}/{job_id}/events", headers=headers, params=params) as r:
            out["status"], out["text"] = r.status_code, "".join(r.iter_text())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(within)
    assert not thread.is_alive(), f"the event stream of {job_id} did not end within {within}s"
    return out["status"], out["text"]


def done_event(text: str) -> dict[str, Any]:
    last = [block for block in text.split("\n\n") if block.strip()][-1]
    assert last.startswith("event: done\ndata: "), last
    return dict(json.loads(last.split("data: ", 1)[1]))


def test_event_stream_of_a_paused_job_ends(api: TestClient, alice: dict[str, str]) -> None:
    job_id = job_with_status(api, alice, "paused")
    status, text = read_stream(api, alice, job_id, within=10)
    assert status == 200
    assert done_event(text) == {"id": job_id, "status": "paused", "reason": "paused"}


def test_event_stream_ends_when_idle(
    api: TestClient, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert get_settings().stream_idle_seconds == 300
    monkeypatch.setenv("GPT2FT_STREAM_IDLE_SECONDS", "1")
    get_settings.cache_clear()
    job_id = job_with_status(api, alice, "running")
    started = time.monotonic()
    status, text = read_stream(api, alice, job_id, within=15)
    assert status == 200 and time.monotonic() - started >= 1
    assert done_event(text) == {"id": job_id, "status": "running", "reason": "idle"}


def test_open_event_streams_are_capped_per_owner(
    api: TestClient,
    alice: dict[str, str],
    bob: dict[str, str],
    redis_db: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert get_settings().max_streams_per_owner == 8
    monkeypatch.setenv("GPT2FT_MAX_STREAMS_PER_OWNER", "2")
    monkeypatch.setenv("GPT2FT_STREAM_IDLE_SECONDS", "4")
    get_settings.cache_clear()
    job_id = job_with_status(api, alice, "running")
    results: list[tuple[int, str]] = []
    threads = [
        threading.Thread(target=lambda: results.append(read_stream(api, alice, job_id)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while redis_db.zcard("gpt2ft:streams:alice") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    refused = api.get(f"{JOBS}/{job_id}/events", headers=alice, params={"stream": "true"})
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "too_many_streams"
    assert "max_streams_per_owner" in refused.json()["error"]["message"]
    bobs = job_with_status(api, bob, "paused")  # another owner has streams of their own
    assert read_stream(api, bob, bobs)[0] == 200
    for thread in threads:
        thread.join()
    assert [status for status, _ in results] == [200, 200]
    assert redis_db.zcard("gpt2ft:streams:alice") == 0  # closed streams gave their slots back
    assert read_stream(api, alice, job_id)[0] == 200


def test_deleting_a_model_deletes_its_checkpoints(
    api: TestClient, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.integration.test_api_models import finished_job, publish_files

    made = finished_job(api, alice, "alice")
    job_id, model_id = made["job_id"], made["model_id"]
    for step in (10, 20, 30):
        publish_files(checkpoint_prefix(job_id, step), {"model.safetensors": b"w" * 1000})
    ckpt = f"{model_id}:ckpt-step-20"
    assert api.get(f"/v1/models/{ckpt}", headers=alice).status_code == 200
    monkeypatch.setenv("GPT2FT_COMPLETION_TIMEOUT_SECONDS", "1")
    get_settings.cache_clear()
    assert api.delete(f"/v1/models/{model_id}", headers=alice).status_code == 200

    # No longer servable or listed...
    assert api.get(f"/v1/models/{ckpt}", headers=alice).status_code == 404
    body = {"model": ckpt, "prompt": "hi", "max_tokens": 1}
    assert api.post("/v1/completions", headers=alice, json=body).status_code == 404
    listed = api.get(f"{JOBS}/{job_id}/checkpoints", headers=alice).json()
    assert listed["data"] == []
    # ...and their bytes are gone from the store.
    assert get_storage().list_keys(f"jobs/{job_id}") == []
    assert not [
        p for p in get_settings().storage_dir.rglob("*") if job_id in str(p) and p.is_file()
    ]
