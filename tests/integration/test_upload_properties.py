"""Property: any uploaded bytes get 200 or a 4xx, never a 5xx; a refusal stores nothing."""

import json

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.integration.test_api_abuse import post_file, stored_files

FIELDS = ["text", "label", "prompt", "completion"]
# Characters that have broken parsers before: NUL, CR, quotes, commas, surrogates, RTL marks.
TRICKY = st.sampled_from(["\x00", "\r", "\n", '"', ",", "\\", "\ud800", "\u202e", "\ufeff"])
TEXT = st.text(st.characters(codec=None) | TRICKY, max_size=12)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
RECORD = st.dictionaries(st.sampled_from(FIELDS) | TEXT, JSON_VALUES, max_size=3)


@st.composite
def jsonl_bytes(draw: st.DrawFn) -> bytes:
    """Lines of JSON objects (ASCII-escaped or raw), garbage lines, big ints and deep nests."""
    lines = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["record", "raw", "number", "deep"]))
        if kind == "record":
            ascii_only = draw(st.booleans())
            lines.append(json.dumps(draw(RECORD), ensure_ascii=ascii_only))
        elif kind == "raw":
            lines.append(draw(TEXT))
        elif kind == "number":
            lines.append('{"text": "a", "label": %s}' % ("9" * draw(st.integers(1, 6000))))
        else:
            depth = draw(st.integers(1, 50_000))
            lines.append('{"text": ' + "[" * depth + "]" * depth + "}")
    return "\n".join(lines).encode("utf-8", "surrogatepass")


@st.composite
def csv_bytes(draw: st.DrawFn) -> bytes:
    """A text,label header (or not) and rows of tricky cells, some quoted, some huge."""
    header = draw(st.sampled_from(["text,label", "label,text", "text", "x,y", ""]))
    rows = [header]
    for _ in range(draw(st.integers(0, 4))):
        cells = draw(st.lists(TEXT | st.just("y" * 140_000), max_size=3))
        quote = draw(st.booleans())
        rows.append(",".join(f'"{c}"' if quote else c for c in cells))
    return "\n".join(rows).encode("utf-8", "surrogatepass")


UPLOADS = st.one_of(st.binary(max_size=300), jsonl_bytes(), csv_bytes())
NAMES = st.sampled_from(["a.jsonl", "a.csv", "a.txt", "a.bin", "../a.jsonl", ".jsonl"]) | TEXT


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(content=UPLOADS, name=NAMES)
@example(content=b'{"text": "\\ud800"}\n', name="a.jsonl")
@example(content=b"text,label\nhello\rworld,x\n", name="a.csv")
def test_any_upload_is_200_or_4xx_and_a_refusal_stores_nothing(
    api: TestClient, alice: dict[str, str], content: bytes, name: str
) -> None:
    rows, disk = stored_files("alice")
    response = post_file(api, alice, name, content)
    assert response.status_code < 500, response.text
    assert response.json()  # a JSON body either way (the OpenAI envelope on refusal)
    after_rows, after_disk = stored_files("alice")
    if response.status_code == 200:
        assert after_rows == rows + 1 and len(after_disk) == len(disk) + 1
    else:
        assert (after_rows, after_disk) == (rows, disk)
