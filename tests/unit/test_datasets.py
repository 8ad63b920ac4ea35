"""Upload validation and record reading: kinds, CSV, and errors that name the line and field."""

from pathlib import Path

import pytest

from shared.datasets import (
    DatasetError,
    check_task,
    detect_format,
    public_format,
    read_records,
    read_texts,
    task_for_format,
    validate_dataset,
)
from shared.settings import get_settings


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


@pytest.mark.parametrize(
    ("name", "content", "stored", "task"),
    [
        ("a.txt", "hello\nworld\n", "txt", "causal_lm"),
        ("a.jsonl", '{"text": "hi"}\n\n{"text": "yo"}\n', "jsonl-text", "causal_lm"),
        ("a.jsonl", '{"prompt": "Q", "completion": " A"}\n', "jsonl-completion", "completion"),
        ("a.jsonl", '{"text": "t", "label": 1}\n{"text": "u", "label": "x"}\n',
         "jsonl-label", "classification"),
        ("a.csv", 'text,label\n"a, b",pos\nc,neg\n', "csv-label", "classification"),
    ],
)  # fmt: skip
def test_kinds_are_detected_and_stored(
    tmp_path: Path, name: str, content: str, stored: str, task: str
) -> None:
    path = write(tmp_path, name, content)
    info = validate_dataset(path, detect_format(name))
    assert info.format == stored and public_format(stored) == name.split(".")[1]
    assert task_for_format(stored) == task


def test_read_records_per_kind(tmp_path: Path) -> None:
    jsonl = write(tmp_path, "c.jsonl", '{"text": "t", "label": 1}\n{"text": "u", "label": "x"}\n')
    assert read_records(jsonl, "jsonl-label") == [
        {"text": "t", "label": "1"},
        {"text": "u", "label": "x"},
    ]
    csv = write(tmp_path, "c.csv", 'label,text\npos,"a, ""quoted""\nline"\n\nneg,b\n')
    assert read_records(csv, "csv-label") == [
        {"label": "pos", "text": 'a, "quoted"\nline'},
        {"label": "neg", "text": "b"},
    ]
    txt = write(tmp_path, "t.txt", "one\ntwo\n")
    assert read_records(txt, "txt") == [{"text": "one\ntwo\n"}]
    assert read_texts(txt, "txt") == ["one\ntwo\n"]
    legacy = write(tmp_path, "l.jsonl", '{"text": "old row"}\n')
    assert read_texts(legacy, "jsonl") == ["old row"]  # rows stored before kinds existed


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.jsonl", '{"text": "a"}\n{"text": "b"}\n{"text": "c", "foo": 1}\n',
         'line 3: unknown field "foo"; expected "text"'),
        ("a.jsonl", '{"prompt": "p", "completion": "c"}\n{"text": "x"}\n',
         "line 2: a text record in a file of completion records"),
        ("a.jsonl", '{"prompt": "p", "completion": "c"}\n{"prompt": "p"}\n',
         'line 2: missing "completion"'),
        ("a.jsonl", '{"prompt": "p", "completion": ""}\n', 'line 1: "completion" is empty'),
        ("a.jsonl", '{"text": "t", "label": 1.5}\n',
         'line 1: "label" must be a string or an integer'),
        ("a.jsonl", '{"text": "t", "label": true}\n', '"label" must be a string or an integer'),
        ("a.jsonl", "[1, 2]\n", "line 1: must be a JSON object"),
        ("a.csv", "text,label,extra\na,b,c\n", "line 1: unknown column 'extra'"),
        ("a.csv", "text\na\n", 'line 1: the header lacks a "label" column'),
        ("a.csv", 'text,label\na,pos\n"two\nlines",\n', 'line 3: "label" is empty'),
        ("a.csv", "text,label\n", "the file is empty"),
        ("a.txt", b"ok\n\x00\n", "line 2: contains a NUL byte"),
        ("a.jsonl", b'{"text": "caf\xe9"}\n', "line 1: is not valid UTF-8"),
    ],
)  # fmt: skip
def test_errors_name_line_and_field(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(DatasetError) as caught:
        validate_dataset(path, detect_format(name))
    assert message in str(caught.value)


def test_over_long_records_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPT2FT_MAX_RECORD_CHARS", "10")
    get_settings.cache_clear()
    try:
        assert get_settings().max_record_chars == 10
        path = write(tmp_path, "a.jsonl", '{"text": "short"}\n{"text": "' + "x" * 11 + '"}\n')
        with pytest.raises(DatasetError) as caught:
            validate_dataset(path, "jsonl")
        assert caught.value.line == 2 and caught.value.field == "text"
        assert "11 characters, over the limit of 10" in str(caught.value)
        txt = write(tmp_path, "a.txt", "short\n" + "y" * 20 + "\n")
        with pytest.raises(DatasetError, match="line 2: has 21 characters"):
            validate_dataset(txt, "txt")
    finally:
        get_settings.cache_clear()


def test_check_task_against_the_file_kind() -> None:
    check_task("causal_lm", "jsonl-label")  # any records have text to model
    check_task("classification", "csv-label")
    with pytest.raises(DatasetError, match='needs "text", "label" records'):
        check_task("classification", "jsonl-text")
    with pytest.raises(DatasetError, match='needs "prompt", "completion" records'):
        check_task("completion", "txt")
