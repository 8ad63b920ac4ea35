"""Chat completions: a conversation rendered with gpt2ft's chat template, then completed.

The prompt is built here (shared/chat.py, the template every fine-tune saves) and sent down
the completions path, so the limits, the in-flight slots and the deadline are the same.
Generation ends at the turn's <|endoftext|>, which a completion already stops at.
"""

from fastapi import APIRouter

from api.auth import Owner
from api.errors import ApiError
from api.queue import run_completion
from api.routes.completions import check_generated_tokens, generation_request, model_location
from api.schemas import (
    ChatChoiceOut,
    ChatCompletionCreate,
    ChatCompletionOut,
    ChatMessageOut,
    CompletionCreate,
)
from shared.chat import ChatError, check_content, render_chat
from shared.ids import new_id, now_ts
from shared.settings import get_settings

router = APIRouter(prefix="/chat/completions", tags=["chat"])

# A reply's length when the request names none: OpenAI's "up to the context" would let one
# request hold a worker for the whole context; a chat turn rarely needs more than this.
CHAT_DEFAULT_MAX_TOKENS = 128


def chat_prompt(body: ChatCompletionCreate) -> str:
    """The conversation as the template renders it, ending with the assistant's header."""
    messages = []
    for i, message in enumerate(body.messages):
        content = message.content
        parts = content if isinstance(content, str) else [p.model_dump() for p in content]
        try:
            text = check_content(parts, f"messages[{i}].content")
        except ChatError as exc:
            raise ApiError(400, str(exc), param=exc.field) from None
        role = "system" if message.role == "developer" else message.role
        messages.append({"role": role, "content": text})
    return render_chat(messages, add_generation_prompt=True)


def max_tokens(body: ChatCompletionCreate) -> int:
    """max_completion_tokens or its older name max_tokens; 400 when both differ."""
    given = {n for n in (body.max_tokens, body.max_completion_tokens) if n is not None}
    if len(given) > 1:
        raise ApiError(
            400,
            "max_tokens and max_completion_tokens differ; give max_completion_tokens only",
            param="max_completion_tokens",
        )
    return given.pop() if given else CHAT_DEFAULT_MAX_TOKENS


def as_completion(body: ChatCompletionCreate) -> CompletionCreate:
    """The completion request the chat request becomes."""
    return CompletionCreate(
        model=body.model,
        prompt=chat_prompt(body),
        max_tokens=max_tokens(body),
        temperature=body.temperature,
        top_p=body.top_p,
        n=body.n,
        stop=body.stop,
        seed=body.seed,
        top_k=body.top_k,
    )


@router.post(
    "",
    response_model=ChatCompletionOut,
    operation_id="createChatCompletion",
    summary="Reply to a conversation",
    responses={503: {"description": "no inference worker answered in time"}},
)
def create_chat_completion(body: ChatCompletionCreate, owner: Owner) -> ChatCompletionOut:
    """Ask an inference worker for the assistant's next message and wait."""
    completion = as_completion(body)
    check_generated_tokens(completion)
    location = model_location(owner, body.model)
    answer = run_completion(
        owner, generation_request(completion, location), get_settings().completion_timeout_seconds
    )
    if "error" in answer:
        error = answer["error"] or {}
        raise ApiError(
            400, str(error.get("message", "generation failed")), param=error.get("param")
        )
    choices = [
        ChatChoiceOut(
            index=choice["index"],
            message=ChatMessageOut(content=choice["text"]),
            finish_reason=choice["finish_reason"],
        )
        for choice in answer.get("choices", [])
    ]
    return ChatCompletionOut(
        id=new_id("chatcmpl"),
        created=now_ts(),
        model=body.model,
        choices=choices,
        usage=answer.get("usage"),
    )
