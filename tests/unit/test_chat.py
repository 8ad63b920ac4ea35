"""Chat records (#11 A): role and order checks, the template, labels on assistant tokens only."""

import json
from pathlib import Path
from typing import Any

import pytest

from shared.chat import CHAT_TEMPLATE, END_OF_TURN, render_chat, trained_spans
from shared.datasets import (
    DatasetError,
    check_task,
    read_records,
    task_for_format,
    validate_dataset,
)
from worker.training.examples import IGNORE, build_examples, chat_window
from worker.training.model_loading import load_tokenizer
from worker.training.task_plan import record_texts

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!", "weight": 0},
    {"role": "user", "content": "Name a colour"},
    {"role": "assistant", "content": " Blue"},
]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tokenizer(models_dir: Path) -> Any:
    return load_tokenizer(str(models_dir / "gpt2-tiny"))


def jsonl(tmp_path: Path, *records: Any) -> Path:
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_chat_files_are_stored_as_chat_and_train_the_chat_task(tmp_path: Path) -> None:
    path = jsonl(tmp_path, {"messages": CHAT}, {"messages": CHAT[1:2] + CHAT[4:]})
    info = validate_dataset(path, "jsonl")
    assert (info.format, info.records) == ("jsonl-chat", 2)
    assert task_for_format(info.format) == "chat"
    records = read_records(path, info.format)
    assert records[0]["messages"][2] == {"role": "assistant", "content": "Hello!", "weight": 0}
    assert records[0]["messages"][4]["weight"] == 1  # an assistant message trains by default
    check_task("chat", info.format)
    check_task("causal_lm", info.format)  # the rendered conversation is text too
    with pytest.raises(DatasetError, match="task 'chat' needs \"messages\" records"):
        check_task("chat", "jsonl-completion")
    assert record_texts(records)[1] == (
        "User:\nHi there<|endoftext|>Assistant:\n Blue<|endoftext|>"
    )


USER = {"role": "user", "content": "q"}
ASSISTANT = {"role": "assistant", "content": "a"}


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"messages": [USER]}, "line 2: the conversation has no assistant message"),
        ({"messages": [USER, {**ASSISTANT, "weight": 0}]},
         'every assistant message has "weight": 0'),
        ({"messages": [USER, {**ASSISTANT, "weight": 2}]}, '"messages[1].weight" must be 0 or 1'),
        ({"messages": [USER, {**ASSISTANT, "weight": True}]},
         '"messages[1].weight" must be 0 or 1'),
        ({"messages": [{**USER, "weight": 1}, ASSISTANT]},
         '"messages[0].weight" is only allowed on assistant messages'),
        ({"messages": [{"role": "tool", "content": "x"}, ASSISTANT]},
         "\"messages[0].role\" is 'tool'; use \"system\", \"user\" or \"assistant\""),
        ({"messages": [{"content": "x"}, ASSISTANT]}, '"messages[0].role" is missing'),
        ({"messages": [USER, {"role": "assistant", "content": 5}]},
         '"messages[1].content" must be a string'),
        ({"messages": [USER, {"role": "assistant"}]}, 'missing "messages[1].content"'),
        ({"messages": [USER, {"role": "assistant", "content": " "}]},
         '"messages[1].content" is empty'),
        ({"messages": [USER, ASSISTANT, {"role": "system", "content": "s"}, ASSISTANT]},
         '"messages[2]" is a system message after the conversation started'),
        ({"messages": [USER, {**ASSISTANT, "name": "bob"}]}, 'unknown field "messages[1].name"'),
        ({"messages": [USER, {"role": "assistant", "content": "a<|endoftext|>b"}]},
         "holds <|endoftext|>, which ends a turn"),
        ({"messages": []}, '"messages" must be a non-empty list'),
        ({"messages": "hi"}, '"messages" must be a non-empty list'),
        ({"messages": [USER, ASSISTANT], "tools": []}, 'line 2: unknown field "tools"'),
        ({"text": "plain"}, "line 2: a text record in a file of chat records"),
    ],
)  # fmt: skip
def test_chat_errors_name_line_and_field(tmp_path: Path, record: Any, message: str) -> None:
    path = jsonl(tmp_path, {"messages": [USER, ASSISTANT]}, record)
    with pytest.raises(DatasetError) as caught:
        validate_dataset(path, "jsonl")
    assert message in str(caught.value)
    assert caught.value.line == 2


def test_the_jinja_template_renders_what_the_api_renders(tokenizer: Any) -> None:
    assert tokenizer.chat_template == CHAT_TEMPLATE
    for messages in (CHAT, CHAT[1:2], [{"role": "user", "content": "multi\nline\n"}]):
        for prompt in (False, True):
            hf = tokenizer.apply_chat_template(
                messages, add_generation_prompt=prompt, tokenize=False
            )
            assert hf == render_chat(messages, add_generation_prompt=prompt)
    rendered = render_chat(CHAT[1:2], add_generation_prompt=True)
    assert rendered == "User:\nHi there<|endoftext|>Assistant:\n"
    # <|endoftext|> in the text is GPT-2's end-of-text token, not its characters.
    ids = tokenizer(rendered).input_ids
    assert ids.count(tokenizer.eos_token_id) == 1 and tokenizer.decode(ids) == rendered


def test_loss_only_on_trained_assistant_tokens(tokenizer: Any) -> None:
    examples = build_examples("chat", [{"messages": CHAT}], tokenizer, max_length=256)
    assert examples.input_ids.shape[0] == 1 and examples.labels is not None
    ids, labels = examples.input_ids[0].tolist(), examples.labels[0].tolist()
    text = render_chat(CHAT)
    assert tokenizer.decode(ids) == text
    # The trained positions decode to exactly the weight-1 reply and its end of turn.
    trained = [i for i, label in enumerate(labels) if label != IGNORE]
    assert tokenizer.decode([ids[i] for i in trained]) == " Blue" + END_OF_TURN
    reply = tokenizer(" Blue").input_ids
    assert trained == list(range(len(ids) - len(reply) - 1, len(ids)))
    assert all(labels[i] == ids[i] for i in trained)
    ((start, end),) = trained_spans(CHAT)
    assert text[start:end] == " Blue" + END_OF_TURN


def test_two_trained_replies_and_padding(tokenizer: Any) -> None:
    both = [{**m, "weight": 1} if m["role"] == "assistant" else m for m in CHAT]
    short = {"messages": [USER, ASSISTANT]}
    examples = build_examples("chat", [{"messages": both}, short], tokenizer, max_length=256)
    assert examples.labels is not None and examples.attention_mask is not None
    for row, expected in ((0, "Hello!" + END_OF_TURN + " Blue" + END_OF_TURN),
                          (1, "a" + END_OF_TURN)):  # fmt: skip
        ids, labels = examples.input_ids[row].tolist(), examples.labels[row].tolist()
        trained = [t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE]
        assert tokenizer.decode(trained) == expected
    # Padding after the short row is masked and never trained.
    pad = examples.attention_mask[1] == 0
    assert pad.any() and (examples.labels[1][pad] == IGNORE).all()


def test_a_long_row_keeps_a_trained_token() -> None:
    labels = [IGNORE] * 10 + [7, 8]
    assert chat_window(labels, 4) == (7, 11)
    assert chat_window([IGNORE, 5, IGNORE, IGNORE, IGNORE], 3) == (0, 3)
    assert chat_window([1, 2], 4) == (0, 2)
