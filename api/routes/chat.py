"""Chat completions: a conversation rendered with gpt2ft's chat template, then completed.

The prompt is built here (shared/chat.py, the template every fine-tune saves) and sent down
the completions path (the same worker request, plain or streamed), so the limits, the
in-flight slots and the deadline are the same. Generation ends at the turn's <|endoftext|>,
which a completion already stops at.
"""

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

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
    SamplingOptions,
)
from api.streaming import StreamShape, chat_logprobs, stream_response
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
    shared = body.model_dump(include=set(SamplingOptions.model_fields), exclude_unset=True)
    return CompletionCreate(**shared, prompt=chat_prompt(body), max_tokens=max_tokens(body))


def check_streaming_and_logprobs(body: ChatCompletionCreate) -> None:
    """400 for options that only mean something beside another one."""
    if body.stream_options is not None and not body.stream:
        raise ApiError(
            400, "stream_options is only allowed with stream: true", param="stream_options"
        )
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(
            400, "top_logprobs is only allowed with logprobs: true", param="top_logprobs"
        )


@router.post(
    "",
    response_model=ChatCompletionOut,
    operation_id="createChatCompletion",
    summary="Reply to a conversation (stream=true: Server-Sent Events)",
    responses={
        200: {"content": {"text/event-stream": {}}},
        503: {"description": "no inference worker answered in time"},
    },
)
async def create_chat_completion(
    body: ChatCompletionCreate, owner: Owner
) -> ChatCompletionOut | StreamingResponse:
    """Ask an inference worker for the assistant's next message: all of it, or streamed."""
    check_streaming_and_logprobs(body)
    completion = as_completion(body)
    check_generated_tokens(completion)
    location = await run_in_threadpool(model_location, owner, body.model)
    request = generation_request(completion, location)
    # The worker's logprobs is the number of alternatives per token; None asks for none.
    request["logprobs"] = (body.top_logprobs or 0) if body.logprobs else None
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        shape = StreamShape(new_id("chatcmpl"), body.model, chat=True, include_usage=include_usage)
        return await stream_response(owner, request, shape, body.n)
    timeout = get_settings().completion_timeout_seconds
    answer = await run_completion(owner, request, timeout)
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
            logprobs=chat_logprobs(choice.get("logprobs")),
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
