"""Request and response bodies, shaped like OpenAI's objects; separate from the ORM."""

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from shared.spec import (
    ExtensionHyperparameters,
    Hyperparameters,
    JobOptions,
    Seed,
    defaults_described,
)

T = TypeVar("T")


class ListPage(BaseModel, Generic[T]):
    """A cursor page: the SDK's SyncCursorPage (and SyncPage, which ignores has_more)."""

    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool = False


class Deleted(BaseModel):
    """What DELETE returns."""

    id: str
    object: str
    deleted: bool = True


class FileOut(BaseModel):
    """OpenAI's file object, plus the format and record count gpt2ft found."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    status_details: str | None = None
    expires_at: int | None = None
    format: str
    records: int


class SupervisedIn(BaseModel):
    """method.supervised of a create-job body."""

    model_config = ConfigDict(extra="forbid")
    hyperparameters: Hyperparameters | None = None


class MethodIn(BaseModel):
    """OpenAI's method object; only supervised fine-tuning exists for GPT-2 here."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["supervised"] = "supervised"
    supervised: SupervisedIn | None = None


# OpenAI's limits: 16 pairs, keys of 64 characters, values of 512.
Metadata = Annotated[
    dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
    Field(max_length=16, description="Up to 16 key-value pairs, stored with the job"),
]


JOB_EXAMPLE: dict[str, Any] = {
    "model": "gpt2-tiny",
    "training_file": "file-abc123",
    "hyperparameters": {"n_epochs": 2, "batch_size": "auto"},
    "suffix": "poems",
}


def _job_create_schema(schema: dict[str, Any]) -> None:
    defaults_described(schema)
    schema["examples"] = [JOB_EXAMPLE]


class OpenAIJobCreate(BaseModel):
    """OpenAI's create-job body."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="A base model from GET /v1/models")
    training_file: str
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = None
    suffix: Annotated[str, Field(max_length=40, pattern=r"^[A-Za-z0-9_-]*$")] | None = None
    seed: Seed | None = None
    method: MethodIn | None = None
    # Refused when given: gpt2ft has no integrations (a 400 naming the field, not a silent drop).
    integrations: list[Any] | None = None
    metadata: Metadata | None = None


class JobCreate(ExtensionHyperparameters, JobOptions, OpenAIJobCreate):
    """OpenAI's create-job body plus gpt2ft's extensions (the shared.spec groups) at the top level.

    Extension hyperparameters may also go in hyperparameters; the task and method options
    only here. Only what the client set counts (model_fields_set): defaults are the server's.
    """

    model_config = ConfigDict(json_schema_extra=_job_create_schema)
    # Resolve and return the plan without creating a job.
    dry_run: bool = False


class JobErrorOut(BaseModel):
    """Why a job failed."""

    code: str
    message: str
    param: str | None = None


class MethodOut(BaseModel):
    """method as OpenAI shows it."""

    type: Literal["supervised"] = "supervised"
    supervised: dict[str, Any]


class JobOut(BaseModel):
    """OpenAI's fine_tuning.job plus progress fields (steps_completed, total_steps, progress)."""

    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobErrorOut | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: dict[str, Any]
    model: str
    organization_id: str
    result_files: list[str] = []
    seed: int
    status: str
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[Any] | None = None
    metadata: dict[str, str] | None = None
    user_provided_suffix: str | None = None
    method: MethodOut
    steps_completed: int = 0
    total_steps: int | None = None
    epoch: float | None = None
    progress: float | None = None
    tokens_per_second: float | None = None
    # gpt2ft method extensions: training_method, lora, trainable_layers, sample_prompts.
    training_method: str = "full"
    lora: dict[str, Any] | None = None
    trainable_layers: int | None = None
    sample_prompts: list[str] = []
    trainable_parameters: int | None = None
    total_parameters: int | None = None
    memory_estimate: dict[str, Any] | None = None
    # The last evaluation, best validation loss, early stop and memorization figures.
    final_metrics: dict[str, Any] | None = None


class EventOut(BaseModel):
    """OpenAI's fine_tuning.job.event."""

    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    data: dict[str, Any] | None = None
    type: str | None = None


class MetricPoint(BaseModel):
    """One logged step; the valid_* fields are set on steps that ran an evaluation."""

    object: Literal["fine_tuning.job.metric"] = "fine_tuning.job.metric"
    step: int
    epoch: float | None = None
    train_loss: float | None = None
    valid_loss: float | None = None
    valid_perplexity: float | None = None
    valid_mean_token_accuracy: float | None = None
    train_mean_token_accuracy: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_seen: int | None = None
    tokens_per_second: float | None = None


class MetricsPage(BaseModel):
    """Every logged step of a job, oldest first."""

    object: Literal["list"] = "list"
    data: list[MetricPoint]


class ErrorDetail(BaseModel):
    """OpenAI's error object."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The envelope every 4xx and 5xx answer uses."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "Bad request"),
        (401, "Missing or invalid API key"),
        (404, "Not found (or another owner's)"),
        (409, "Conflicts with the object's state"),
        (422, "A field failed validation"),
    )
}


class CheckpointMetrics(BaseModel):
    """The metrics OpenAI shows for a checkpoint; unknown ones stay out."""

    step: float | None = None
    train_loss: float | None = None
    valid_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None


class CheckpointOut(BaseModel):
    """OpenAI's fine_tuning.job.checkpoint."""

    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int
    # gpt2ft extension: the checkpoint with the lowest validation loss so far.
    is_best: bool = False


class ModelOut(BaseModel):
    """OpenAI's model object."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # gpt2ft: false for a base model this host cannot load (a catalog name offline and not in
    # the Hugging Face cache, an incomplete folder); requests on it fail at once with
    # unavailable_reason (code model_not_available). Fine-tuned models are always true.
    available: bool = True
    unavailable_reason: str | None = None


StopText = Annotated[str, Field(max_length=64)]


class StreamOptions(BaseModel):
    """OpenAI's stream_options: include_usage adds a last chunk with the usage."""

    model_config = ConfigDict(extra="forbid")
    include_usage: bool | None = None


class SamplingOptions(BaseModel):
    """The fields completions and chat completions share: the model, sampling, streaming."""

    model_config = ConfigDict(extra="forbid")
    model: str
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(ge=0, le=1)] = 1.0
    n: Annotated[int, Field(ge=1, le=16)] = 1
    # Four sequences of 64 characters, as OpenAI allows: each is checked after every token.
    stop: StopText | Annotated[list[StopText], Field(max_length=4)] | None = None
    seed: int | None = None
    top_k: Annotated[int, Field(ge=0, le=50_000)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None


class CompletionCreate(SamplingOptions):
    """OpenAI's completion body plus top_k."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"model": "gpt2-tiny", "prompt": "Once upon a time", "max_tokens": 32}]
        },
    )
    prompt: str | list[str] = ""
    max_tokens: Annotated[int, Field(ge=1, le=2048)] = 16
    echo: bool = False
    # Each token's log-probability and its `logprobs` likeliest alternatives (OpenAI: 0..5).
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None


class ChoiceOut(BaseModel):
    """One generated text."""

    text: str
    index: int
    finish_reason: str
    logprobs: dict[str, Any] | None = None


class CompletionOut(BaseModel):
    """OpenAI's text_completion."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[ChoiceOut]
    usage: dict[str, int] | None = None
    system_fingerprint: str | None = None


class TextPart(BaseModel):
    """OpenAI's text content part; the parts of a message's content are joined."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    """One message of a chat request; "developer" (OpenAI's newer "system") renders as system."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None


class ChatCompletionCreate(SamplingOptions):
    """OpenAI's chat completion body plus top_k."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "gpt2-tiny",
                    "messages": [{"role": "user", "content": "Tell me a joke."}],
                    "max_completion_tokens": 32,
                }
            ]
        },
    )
    messages: Annotated[list[ChatMessageIn], Field(min_length=1)]
    # Either name works; None means CHAT_DEFAULT_MAX_TOKENS (api/routes/chat.py).
    max_tokens: Annotated[int, Field(ge=1, le=2048)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=2048)] | None = None
    # Each reply token's log-probability, and its top_logprobs likeliest alternatives (0..20).
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None


class ChatMessageOut(BaseModel):
    """The assistant's reply."""

    role: Literal["assistant"] = "assistant"
    content: str
    refusal: str | None = None


class ChatChoiceOut(BaseModel):
    """One reply; finish_reason "stop" at the end of the turn or a stop sequence."""

    index: int
    message: ChatMessageOut
    finish_reason: str
    logprobs: dict[str, Any] | None = None


class ChatCompletionOut(BaseModel):
    """OpenAI's chat.completion."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoiceOut]
    usage: dict[str, int] | None = None
    system_fingerprint: str | None = None
