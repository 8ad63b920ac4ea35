"""Torch-free dataset parsing: structural validation at upload, record reading in the worker."""

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.chat import ChatError, check_training_messages
from shared.settings import get_settings

# Containers a filename may name; the stored format adds the record kind ("jsonl-completion").
FORMATS = ("txt", "jsonl", "csv")
# Record kinds and their fields, in the order errors and docs name them.
KINDS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "completion": ("prompt", "completion"),
    "classification": ("text", "label"),
    "chat": ("messages",),
}
# The task each record kind trains by default.
KIND_TASKS = {
    "text": "causal_lm",
    "completion": "completion",
    "classification": "classification",
    "chat": "chat",
}
TASK_KINDS = {task: kind for kind, task in KIND_TASKS.items()}
# The kind's code in File.format, a String(16) column: "jsonl-label" fits, "-classification" not.
KIND_CODES = {"text": "text", "completion": "completion", "classification": "label", "chat": "chat"}
CODE_KINDS = {code: kind for kind, code in KIND_CODES.items()}

# Fields as strings; a chat record's "messages" is a list of {"role", "content"[, "weight"]}.
Record = dict[str, Any]
# A label of more digits is not a class id; Python refuses past 4300 digits anyway.
MAX_INT_DIGITS = 100
# A class name, not a sentence: labels are saved in the model's config as id2label.
MAX_LABEL_CHARS = 100
# Names from the file quoted in errors are cut here: an error must not echo a megabyte back.
MAX_SHOWN_CHARS = 80
# A surrogate left in a decoded string is a lone one ("\ud800"): no UTF-8 can carry it.
_SURROGATE = re.compile("[\ud800-\udfff]")


class DatasetError(ValueError):
    """A file that cannot be trained on; says where (line, field) and what to do."""

    def __init__(self, message: str, line: int | None = None, field: str | None = None) -> None:
        self.line = line
        self.field = field and shown(field)
        where = f"line {line}: " if line is not None else ""
        super().__init__(where + message)


def shown(text: str) -> str:
    """text as an error may quote it: cut short, lone surrogates escaped (valid UTF-8)."""
    cut = text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS] + "..."
    return cut.encode("utf-8", "backslashreplace").decode("utf-8")


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise DatasetError(
            f"holds a number of {len(digits.lstrip('-'))} digits (at most {MAX_INT_DIGITS}); "
            "write long labels as strings"
        )
    return int(digits)


@dataclass(frozen=True)
class DatasetInfo:
    """What upload validation learned about a file; format is the stored one (with kind)."""

    format: str
    records: int


def detect_format(filename: str) -> str:
    """txt, jsonl or csv from the filename's extension; anything unknown is refused."""
    lowered = filename.lower()
    if lowered.endswith((".jsonl", ".jsonlines", ".ndjson")):
        return "jsonl"
    if lowered.endswith((".txt", ".text")):
        return "txt"
    if lowered.endswith(".csv"):
        return "csv"
    raise DatasetError(
        f"cannot tell the format of {filename!r}: name it .txt (plain text), "
        '.jsonl (one {"text": ...}, {"prompt": ..., "completion": ...}, '
        '{"text": ..., "label": ...} or {"messages": [...]} object per line) or .csv '
        "(text,label columns)",
        field="file",
    )


def public_format(stored: str) -> str:
    """The container the API shows ("jsonl") for a stored format ("jsonl-completion")."""
    return stored.split("-", 1)[0]


def record_kind(stored: str) -> str | None:
    """The record kind a stored format names; None for a legacy "jsonl" row (detect on read)."""
    if stored == "txt":
        return "text"
    return CODE_KINDS[stored.split("-", 1)[1]] if "-" in stored else None


def task_for_format(stored: str) -> str:
    """The task a file trains when the job names none."""
    return KIND_TASKS[record_kind(stored) or "text"]


def check_task(task: str, stored: str) -> None:
    """Refuse a task the file's records cannot teach (causal_lm trains on any kind)."""
    kind = record_kind(stored) or "text"
    if task != "causal_lm" and kind != TASK_KINDS[task]:
        fields = _quoted(KINDS[TASK_KINDS[task]])
        raise DatasetError(
            f"task {task!r} needs {fields} records, but the file holds {kind} records "
            f"({_quoted(KINDS[kind])}); upload a matching file or leave task out to infer it",
            field="task",
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


def kind_of_fields(fields: set[str]) -> str:
    """The kind whose fields best match a record's keys (the one it most likely meant)."""
    if "messages" in fields:
        return "chat"
    for kind in ("classification", "completion", "text"):
        if set(KINDS[kind]) == fields:
            return kind
    if "prompt" in fields or "completion" in fields:
        return "completion"
    return "classification" if "label" in fields else "text"


def _quoted(names: tuple[str, ...]) -> str:
    return ", ".join(f'"{name}"' for name in names)


def check_record(number: int, record: dict[str, Any], kind: str, max_chars: int) -> Record:
    """The record's fields as strings, or a DatasetError naming the line and field."""
    expected = KINDS[kind]
    keys = set(record)
    other = next((k for k, names in KINDS.items() if k != kind and set(names) == keys), None)
    if other is not None:
        raise DatasetError(
            f"a {other} record in a file of {kind} records; every line needs "
            f"the same fields ({_quoted(expected)})",
            line=number,
        )
    for name in expected:
        if name not in record:
            raise DatasetError(f'missing "{name}"', line=number, field=name)
    if kind == "chat":
        return check_chat_record(number, record, max_chars)
    for name in record:
        if name not in expected:
            raise DatasetError(
                f'unknown field "{shown(name)}"; expected {_quoted(expected)}',
                line=number,
                field=name,
            )
    out: Record = {}
    for name in expected:
        value = record[name]
        if name == "label" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            kinds = "a string or an integer" if name == "label" else "a string"
            raise DatasetError(f'"{name}" must be {kinds}', line=number, field=name)
        if not value.strip():
            raise DatasetError(f'"{name}" is empty', line=number, field=name)
        if name == "label" and len(value) > MAX_LABEL_CHARS:
            raise DatasetError(
                f'"label" has {len(value)} characters; a class name has at most {MAX_LABEL_CHARS}',
                line=number,
                field=name,
            )
        if surrogate := _SURROGATE.search(value):
            raise DatasetError(
                f'"{name}" holds a lone surrogate ({shown(surrogate.group())}), which is not '
                "text; fix the \\u escape or save the file as UTF-8",
                line=number,
                field=name,
            )
        if len(value) > max_chars:
            raise DatasetError(
                f'"{name}" has {len(value)} characters, over the limit of {max_chars}; '
                "split the record",
                line=number,
                field=name,
            )
        out[name] = value
    return out


def check_chat_record(number: int, record: dict[str, Any], max_chars: int) -> Record:
    """A chat record's messages checked (roles, order, content, weight), or a DatasetError."""
    for name in record:
        if name != "messages":
            raise DatasetError(
                f'unknown field "{shown(name)}"; a chat record has only "messages" '
                "(tools and functions are not supported)",
                line=number,
                field=name,
            )
    try:
        messages = check_training_messages(record["messages"])
    except ChatError as exc:
        raise DatasetError(str(exc), line=number, field=exc.field) from None
    for i, message in enumerate(messages):
        if surrogate := _SURROGATE.search(message["content"]):
            raise DatasetError(
                f'"messages[{i}].content" holds a lone surrogate ({shown(surrogate.group())}), '
                "which is not text; fix the \\u escape or save the file as UTF-8",
                line=number,
                field=f"messages[{i}].content",
            )
    total = sum(len(m["content"]) for m in messages)
    if total > max_chars:
        raise DatasetError(
            f"the messages have {total} characters, over the limit of {max_chars}; "
            "split the conversation",
            line=number,
            field="messages",
        )
    return {"messages": messages}


def _jsonl_records(path: Path, kind: str | None, max_chars: int) -> Iterator[tuple[str, Record]]:
    for number, line in _decode_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line, parse_int=_bounded_int)
        except DatasetError as exc:
            raise DatasetError(str(exc), line=number) from None
        except json.JSONDecodeError as exc:
            raise DatasetError(f"is not valid JSON ({exc.msg})", line=number) from None
        except RecursionError:
            raise DatasetError(
                "nests JSON too deeply; a record is one flat object", line=number
            ) from None
        if not isinstance(record, dict):
            raise DatasetError('must be a JSON object like {"text": "..."}', line=number)
        kind = kind or kind_of_fields(set(record))
        yield kind, check_record(number, record, kind, max_chars)


def _csv_rows(path: Path, max_chars: int) -> Iterator[tuple[int, list[str]]]:
    """(line where the row starts, cells); csv.Error becomes a DatasetError naming the line."""
    # The csv module's own cap (131072) is global: raise it to the record limit for our parse.
    csv.field_size_limit(max(csv.field_size_limit(), max_chars + 1))
    reader = csv.reader(line for _, line in _decode_lines(path))
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DatasetError(_csv_problem(exc, max_chars), line=start) from None
        yield start, row
        # A quoted cell may span lines: errors name the line where the record starts.
        start = reader.line_num + 1


def _csv_problem(exc: csv.Error, max_chars: int) -> str:
    text = str(exc)
    if "field larger than field limit" in text:
        return f"has a cell over the limit of {max_chars} characters; split the record"
    if "new-line character seen in unquoted field" in text:
        return (
            "has a carriage return (\\r) inside an unquoted cell; quote the cell or save "
            "the file with \\n line endings"
        )
    return f"is not valid CSV ({text})"


def _csv_records(path: Path, max_chars: int) -> Iterator[tuple[str, Record]]:
    rows = _csv_rows(path, max_chars)
    _, header = next(rows, (1, None))
    if header is None:
        return
    names = [name.strip() for name in header]
    for name in names:
        if name not in KINDS["classification"]:
            raise DatasetError(
                f'unknown column {shown(name)!r}; expected "text", "label"', line=1, field=name
            )
    for name in KINDS["classification"]:
        if name not in names:
            raise DatasetError(f'the header lacks a "{name}" column', line=1, field=name)
    for number, row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(names):
            raise DatasetError(f"has {len(row)} columns, the header has {len(names)}", line=number)
        record = dict(zip(names, row, strict=True))
        yield "classification", check_record(number, record, "classification", max_chars)


def _txt_records(path: Path, max_chars: int) -> Iterator[tuple[str, Record]]:
    has_text = False
    for number, line in _decode_lines(path):
        if len(line) > max_chars:
            raise DatasetError(
                f"has {len(line)} characters, over the limit of {max_chars}; break the line",
                line=number,
            )
        has_text = has_text or bool(line.strip())
    if has_text:
        yield "text", {"text": path.read_text(encoding="utf-8")}


def iter_records(path: Path, fmt: str) -> Iterator[tuple[str, Record]]:
    """(kind, record) for every record; the stored format's kind, else the first record's."""
    max_chars = get_settings().max_record_chars
    container = public_format(fmt)
    if container == "txt":
        return _txt_records(path, max_chars)
    if container == "csv":
        return _csv_records(path, max_chars)
    return _jsonl_records(path, record_kind(fmt), max_chars)


def validate_dataset(path: Path, fmt: str) -> DatasetInfo:
    """Check a whole file structurally; raises DatasetError at the first problem."""
    records, kind = 0, "text"
    settings = get_settings()
    labels: set[str] = set()
    for record_kind_seen, record in iter_records(path, fmt):
        records, kind = records + 1, record_kind_seen
        if records > settings.max_records:
            raise DatasetError(
                f"the file has more than {settings.max_records} records, the most one job "
                "trains on (GPT2FT_MAX_RECORDS); split it, or join short records into longer ones",
                field="file",
            )
        if "label" in record and len(labels | {record["label"]}) > settings.max_labels:
            raise DatasetError(
                f"record {records} brings the number of distinct labels past "
                f"{settings.max_labels} (GPT2FT_MAX_LABELS); merge rare classes",
                field="label",
            )
        labels.add(record.get("label", ""))
    if records == 0:
        raise DatasetError("the file is empty; it needs at least one record of text", field="file")
    stored = "txt" if fmt == "txt" else f"{public_format(fmt)}-{KIND_CODES[kind]}"
    return DatasetInfo(format=stored, records=records)


def read_records(path: Path, fmt: str) -> list[Record]:
    """Every record as a dict of its fields (a .txt file is one {"text"} record)."""
    return [record for _, record in iter_records(path, fmt)]


def read_texts(path: Path, fmt: str) -> list[str]:
    """The records to train on: the whole text of a .txt file, or each record's "text"."""
    records = read_records(path, fmt)
    if records and "text" not in records[0]:
        raise DatasetError('the file holds prompt/completion records, not "text" records')
    return [record["text"] for record in records]
