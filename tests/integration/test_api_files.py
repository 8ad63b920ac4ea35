"""Files: upload (good, bad, too large), list, retrieve, content, delete, owners."""

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from shared.db.session import session_scope
from shared.db.tables import File
from shared.storage import file_key, get_storage
from tests.integration.conftest import GOOD_JSONL, upload


def stored_files() -> list[str]:
    """Every stored object, and every file in the scratch folder uploads arrive in."""
    storage = get_storage()
    arriving = storage.scratch / "uploads"
    spooled = [str(p) for p in arriving.rglob("*") if p.is_file()] if arriving.exists() else []
    return storage.list_keys("files") + storage.list_keys("jobs") + spooled


def stored_bytes(file_id: str) -> bytes | None:
    """The bytes stored for a file id, or None."""
    return get_storage().read_bytes(file_key(file_id))


def file_rows() -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(File)) or 0)


def test_upload_jsonl_and_txt(api: TestClient, alice: dict[str, str]) -> None:
    body = upload(api, alice, GOOD_JSONL)
    assert body["object"] == "file" and body["purpose"] == "fine-tune"
    assert body["bytes"] == len(GOOD_JSONL) and body["records"] == 20
    assert body["status"] == "processed" and body["filename"] == "train.jsonl"
    assert str(body["id"]).startswith("file-")
    assert stored_bytes(str(body["id"])) == GOOD_JSONL

    text = upload(api, alice, b"hello world\nsecond line\n", name="../../etc/corpus.txt")
    # Stored under its id; the name shown is the base name only.
    assert text["format"] == "txt" and text["filename"] == "corpus.txt"
    assert stored_bytes(str(text["id"])) == b"hello world\nsecond line\n"
    assert file_rows() == 2


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("bad.jsonl", b'{"text": "ok"}\n{"prompt": "no text"}\n', 'line 2: missing "text"'),
        ("bad.jsonl", b'{"text": "ok"}\n{"text": "ok"}\nnot json\n', "line 3: is not valid JSON"),
        ("bad.txt", b"caf\xe9\n", "line 1: is not valid UTF-8"),
        ("data.csv", b"a,b\n", "line 1: unknown column 'a'"),
        ("data.xml", b"<a/>\n", "cannot tell the format"),
        ("empty.txt", b"", "the file is empty"),
    ],
)
def test_bad_upload_is_refused_and_leaves_nothing(
    api: TestClient, alice: dict[str, str], name: str, content: bytes, fragment: str
) -> None:
    response = api.post(
        "/v1/files", headers=alice, files={"file": (name, content)}, data={"purpose": "fine-tune"}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert fragment in error["message"] and error["param"] == "file"
    assert error["type"] == "invalid_request_error"
    assert file_rows() == 0 and stored_files() == []


def test_upload_over_limit_is_413_while_streaming(
    api: TestClient, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.settings import get_settings

    monkeypatch.setenv("GPT2FT_MAX_UPLOAD_BYTES", "1000")
    get_settings.cache_clear()
    big = b'{"text": "%s"}\n' % (b"x" * 3000)  # under the Content-Length precheck margin
    response = api.post(
        "/v1/files",
        headers=alice,
        files={"file": ("big.jsonl", big)},
        data={"purpose": "fine-tune"},
    )
    assert response.status_code == 413, response.text
    assert "1000 bytes" in response.json()["error"]["message"]
    assert file_rows() == 0 and stored_files() == []
    huge = b"y" * 200_000  # refused from Content-Length before any byte is spooled
    response = api.post(
        "/v1/files",
        headers=alice,
        files={"file": ("huge.txt", huge)},
        data={"purpose": "fine-tune"},
    )
    assert response.status_code == 413
    assert file_rows() == 0 and stored_files() == []
    small = upload(api, alice, b'{"text": "fits"}\n')
    assert small["bytes"] == 17


def test_wrong_purpose_and_missing_file(api: TestClient, alice: dict[str, str]) -> None:
    response = api.post(
        "/v1/files", headers=alice, files={"file": ("a.txt", b"hi\n")}, data={"purpose": "batch"}
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "purpose"
    response = api.post("/v1/files", headers=alice, data={"purpose": "fine-tune"})
    assert response.status_code == 400
    assert file_rows() == 0 and stored_files() == []


def test_list_retrieve_content_delete(
    api: TestClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    ids = [str(upload(api, alice, GOOD_JSONL)["id"]) for _ in range(3)]
    bobs = str(upload(api, bob, b"bob's text\n", name="b.txt")["id"])

    listed = api.get("/v1/files", headers=alice).json()
    assert listed["object"] == "list" and listed["has_more"] is False
    assert sorted(f["id"] for f in listed["data"]) == sorted(ids)

    first = api.get("/v1/files", headers=alice, params={"limit": 2}).json()
    assert len(first["data"]) == 2 and first["has_more"] is True
    rest = api.get(
        "/v1/files", headers=alice, params={"limit": 2, "after": first["data"][-1]["id"]}
    ).json()
    assert rest["has_more"] is False
    assert sorted(f["id"] for f in first["data"] + rest["data"]) == sorted(ids)

    assert api.get(f"/v1/files/{ids[0]}", headers=alice).json()["id"] == ids[0]
    content = api.get(f"/v1/files/{ids[0]}/content", headers=alice)
    assert content.status_code == 200 and content.content == GOOD_JSONL

    for path in (f"/v1/files/{bobs}", f"/v1/files/{bobs}/content"):
        response = api.get(path, headers=alice)
        assert response.status_code == 404
        assert response.json()["error"]["message"] == f"No such file: {bobs}"
    assert api.delete(f"/v1/files/{bobs}", headers=alice).status_code == 404
    assert stored_bytes(bobs) is not None

    deleted = api.delete(f"/v1/files/{ids[0]}", headers=alice)
    assert deleted.json() == {"id": ids[0], "object": "file", "deleted": True}
    assert stored_bytes(ids[0]) is None
    assert api.get(f"/v1/files/{ids[0]}", headers=alice).status_code == 404
    assert len(api.get("/v1/files", headers=alice).json()["data"]) == 2
