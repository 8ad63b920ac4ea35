"""Completions: text from a base model, a fine-tuned model or a checkpoint."""

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from api.auth import Owner
from api.errors import ApiError, not_found
from api.queue import run_completion
from api.routes.models import find_checkpoint, find_fine_tuned, require_available
from api.schemas import ChoiceOut, CompletionCreate, CompletionOut
from api.streaming import StreamShape, completion_logprobs, stream_response
from shared.catalog import find_base_model
from shared.db.session import session_scope
from shared.ids import new_id, now_ts
from shared.settings import get_settings
from shared.storage import STORED_LOCATION

router = APIRouter(prefix="/completions", tags=["completions"])


def model_location(owner: str, model_id: str) -> str:
    """Where a worker loads model_id from: a base's folder or hub id, or a stored set; else 404."""
    base = find_base_model(model_id, get_settings().resolved_models_dir)
    if base is not None:
        require_available(base)
        return base.location
    with session_scope() as session:
        model = find_fine_tuned(session, owner, model_id)
        if model is not None:
            return STORED_LOCATION + model.path
        checkpoint = find_checkpoint(session, owner, model_id)
        if checkpoint is not None:
            return STORED_LOCATION + checkpoint.path
    raise not_found("model", model_id, param="model")


def generation_request(body: CompletionCreate, location: str) -> dict[str, object]:
    """The JSON request the inference worker receives."""
    prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    return {
        "model": body.model,
        "location": location,
        "prompts": prompts,
        "max_tokens": body.max_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "n": body.n,
        "stop": stop or None,
        "seed": body.seed,
        "echo": body.echo,
        "top_k": body.top_k,
        "logprobs": body.logprobs,
    }


def check_generated_tokens(body: CompletionCreate) -> None:
    """400 when prompts x n x max_tokens is over max_generated_tokens_per_request."""
    prompts = 1 if isinstance(body.prompt, str) else len(body.prompt)
    total, limit = (
        prompts * body.n * body.max_tokens,
        get_settings().max_generated_tokens_per_request,
    )
    if total > limit:
        raise ApiError(
            400,
            f"{prompts} prompts x n={body.n} x max_tokens={body.max_tokens} asks for {total} "
            f"tokens, over the per-request limit of {limit} "
            "(GPT2FT_MAX_GENERATED_TOKENS_PER_REQUEST); send fewer prompts or lower max_tokens",
            param="max_tokens",
            code="too_many_tokens",
        )


@router.post(
    "",
    response_model=CompletionOut,
    operation_id="createCompletion",
    summary="Generate text (stream=true: Server-Sent Events)",
    responses={
        200: {"content": {"text/event-stream": {}}},
        503: {"description": "no inference worker answered in time"},
    },
)
async def create_completion(
    body: CompletionCreate, owner: Owner
) -> CompletionOut | StreamingResponse:
    """Ask an inference worker for text: wait for all of it (awaited: the wait holds no
    thread), or stream it as it comes."""
    if isinstance(body.prompt, list) and not body.prompt:
        raise ApiError(400, "prompt: give a string or a non-empty list of strings", param="prompt")
    if body.stream_options is not None and not body.stream:
        raise ApiError(
            400, "stream_options is only allowed with stream: true", param="stream_options"
        )
    check_generated_tokens(body)
    location = await run_in_threadpool(model_location, owner, body.model)
    request = generation_request(body, location)
    if body.stream:
        prompts = 1 if isinstance(body.prompt, str) else len(body.prompt)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        shape = StreamShape(new_id("cmpl"), body.model, include_usage=include_usage)
        return await stream_response(owner, request, shape, prompts * body.n)
    settings = get_settings()
    answer = await run_completion(owner, request, settings.completion_timeout_seconds)
    if "error" in answer:
        error = answer["error"] or {}
        raise ApiError(
            400, str(error.get("message", "generation failed")), param=error.get("param")
        )
    choices = [
        ChoiceOut(**{**choice, "logprobs": completion_logprobs(choice.get("logprobs"))})
        for choice in answer.get("choices", [])
    ]
    return CompletionOut(
        id=new_id("cmpl"),
        created=now_ts(),
        model=body.model,
        choices=choices,
        usage=answer.get("usage"),
    )
