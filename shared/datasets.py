"""Torch-free dataset parsing: structural validation at upload, record reading in the worker."""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FORMATS = ("txt", "jsonl")


class DatasetError(ValueError):
    """A file that cannot be trained on; says where (line, field) and what to do."""

    def __init__(self, message: str, line: int | None = None, field: str | None = None) -> None:
        self.line = line
        self.field = field
        where = f"line {line}: " if line is not None else ""
        super().__init__(where + message)


@dataclass(frozen=True)
class DatasetInfo:
    """What upload validation learned about a file."""

    format: str
    records: int


def detect_format(filename: str) -> str:
    """txt or jsonl from the filename's extension; anything unknown is refused."""
    lowered = filename.lower()
    if lowered.endswith((".jsonl", ".jsonlines", ".ndjson")):
        return "jsonl"
    if lowered.endswith((".txt", ".text")):
        return "txt"
    raise DatasetError(
        f"cannot tell the format of {filename!r}: name it .txt (plain text) "
        'or .jsonl (one {"text": ...} object per line)',
        field="file",
    )


def _decode_lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if b"\x00" in raw:
                raise DatasetError("contains a NUL byte; the file is binary, not text", line=number)
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetError(
                    f"is not valid UTF-8 (byte {exc.start}); save the file as UTF-8", line=number
                ) from None


def parse_jsonl_line(number: int, line: str) -> str:
    """The "text" of one JSONL line, or a DatasetError naming the line and field."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"is not valid JSON ({exc.msg})", line=number) from None
    if not isinstance(record, dict):
        raise DatasetError('must be a JSON object like {"text": "..."}', line=number)
    if "text" not in record:
        raise DatasetError('missing "text"', line=number, field="text")
    text = record["text"]
    if not isinstance(text, str):
        raise DatasetError('"text" must be a string', line=number, field="text")
    if not text.strip():
        raise DatasetError('"text" is empty', line=number, field="text")
    return text


def validate_dataset(path: Path, fmt: str) -> DatasetInfo:
    """Check a whole file structurally; raises DatasetError at the first problem."""
    records = 0
    has_text = False
    for number, line in _decode_lines(path):
        if fmt == "jsonl":
            if line.strip():
                parse_jsonl_line(number, line)
                records += 1
        else:
            records += 1
            has_text = has_text or bool(line.strip())
    if records == 0 or (fmt == "txt" and not has_text):
        raise DatasetError("the file is empty; it needs at least one record of text", field="file")
    return DatasetInfo(format=fmt, records=records)


def read_texts(path: Path, fmt: str) -> list[str]:
    """The records to train on: the whole text of a .txt file, or each JSONL "text"."""
    if fmt == "txt":
        return [path.read_text(encoding="utf-8")]
    return [parse_jsonl_line(n, line) for n, line in _decode_lines(path) if line.strip()]
