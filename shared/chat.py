"""gpt2ft's chat template for GPT-2, torch-free: one rendering for training, the API and HF.

GPT-2 has no chat tokens, and adding some would leave their embeddings untrained. So a turn
is its role as a plain-text header, a newline, the content and <|endoftext|> (GPT-2's only
special token, which generation already stops at):

    System:\\n{content}<|endoftext|>User:\\n{content}<|endoftext|>Assistant:\\n{content}<|endoftext|>

A generation prompt ends with "Assistant:\\n". The same text comes from CHAT_TEMPLATE (the
Jinja template saved as the tokenizer's chat_template in every checkpoint and model, so
`apply_chat_template` works on a download) and from render_chat (the API, which has no
tokenizer). docs/chat.md documents it; tests check that the two agree.
"""

from collections.abc import Iterable
from typing import Any

# GPT-2's <|endoftext|>: it ends every turn, so generation stops at the end of a reply.
END_OF_TURN = "<|endoftext|>"
TRAINING_ROLES = ("system", "user", "assistant")
# The Jinja form of render_chat (transformers renders it with trim_blocks and lstrip_blocks).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}:\n{{ message['content'] }}" + END_OF_TURN + "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:\n{% endif %}"
)


class ChatError(ValueError):
    """A conversation the template cannot hold; field is the path inside it (messages[2].role)."""

    def __init__(self, message: str, field: str) -> None:
        self.field = field
        super().__init__(message)


def header(role: str) -> str:
    """The text before a turn's content."""
    return f"{role.capitalize()}:\n"


def render_chat(messages: Iterable[dict[str, Any]], add_generation_prompt: bool = False) -> str:
    """The conversation as text, exactly as CHAT_TEMPLATE renders it."""
    text = "".join(header(m["role"]) + m["content"] + END_OF_TURN for m in messages)
    return text + header("assistant") if add_generation_prompt else text


def trained_spans(messages: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(start, end) character ranges of render_chat's text the loss sees: each assistant
    message of weight 1, its content and closing <|endoftext|> (not its header)."""
    spans, position = [], 0
    for message in messages:
        start = position + len(header(message["role"]))
        position = start + len(message["content"]) + len(END_OF_TURN)
        if message["role"] == "assistant" and message.get("weight", 1) == 1:
            spans.append((start, position))
    return spans


def check_content(content: Any, field: str) -> str:
    """content as a string; OpenAI's text parts ([{"type": "text", "text": ...}]) are joined."""
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise ChatError(f'"{field}" must be a string', field)
    if END_OF_TURN in content:
        raise ChatError(
            f'"{field}" holds {END_OF_TURN}, which ends a turn in the chat template; remove it',
            field,
        )
    return content


def check_training_messages(messages: Any) -> list[dict[str, Any]]:
    """A training record's messages, checked and normalised (every assistant has a weight)."""
    if not isinstance(messages, list) or not messages:
        raise ChatError('"messages" must be a non-empty list of {"role", "content"} objects',
                        "messages")  # fmt: skip
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ChatError(f'"{where}" must be an object with "role" and "content"', where)
        for name in message:
            if name not in ("role", "content", "weight"):
                raise ChatError(
                    f'unknown field "{where}.{str(name)[:80]}"; a message has "role", "content" '
                    'and (on assistant messages) "weight"',
                    f"{where}.{name}",
                )
        role = message.get("role")
        if role not in TRAINING_ROLES:
            shown = repr(role)[:80] if role is not None else "missing"
            raise ChatError(
                f'"{where}.role" is {shown}; use "system", "user" or "assistant"', f"{where}.role"
            )
        if "content" not in message:
            raise ChatError(f'missing "{where}.content"', f"{where}.content")
        content = check_content(message["content"], f"{where}.content")
        if not content.strip():
            raise ChatError(f'"{where}.content" is empty', f"{where}.content")
        if role == "system" and any(m["role"] != "system" for m in out):
            raise ChatError(
                f'"{where}" is a system message after the conversation started; '
                "system messages come first",
                f"{where}.role",
            )
        checked: dict[str, Any] = {"role": role, "content": content}
        if "weight" in message:
            weight = message["weight"]
            if role != "assistant":
                raise ChatError(f'"{where}.weight" is only allowed on assistant messages',
                                f"{where}.weight")  # fmt: skip
            if isinstance(weight, bool) or weight not in (0, 1):
                raise ChatError(f'"{where}.weight" must be 0 or 1', f"{where}.weight")
        if role == "assistant":
            checked["weight"] = int(message.get("weight", 1))
        out.append(checked)
    if not any(m["role"] == "assistant" for m in out):
        raise ChatError("the conversation has no assistant message to learn from", "messages")
    if not any(m.get("weight") == 1 for m in out):
        raise ChatError(
            'every assistant message has "weight": 0, so the record teaches nothing; '
            "give at least one weight 1 or drop the record",
            "messages",
        )
    return out
