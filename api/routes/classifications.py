"""Classifications: labels and probabilities from a fine-tuned classifier."""

from typing import Annotated, Literal

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Owner
from api.errors import ApiError
from api.queue import run_classification
from api.routes.completions import model_location
from shared.settings import get_settings

router = APIRouter(prefix="/classifications", tags=["classifications"])

# A request the API holds open while a worker answers: a few hundred texts, not a dataset.
MAX_INPUTS = 256


class ClassificationCreate(BaseModel):
    """A classifier model id and the texts to label."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="A fine-tuned model (or checkpoint) of a classification job")
    input: Annotated[list[str], Field(min_length=1, max_length=MAX_INPUTS)] | str


class ClassificationOut(BaseModel):
    """One input's label and the probability of every label."""

    object: Literal["classification"] = "classification"
    index: int
    label: str
    probabilities: dict[str, float]


class ClassificationList(BaseModel):
    """The answers, in input order."""

    object: Literal["list"] = "list"
    model: str
    data: list[ClassificationOut]


@router.post(
    "",
    response_model=ClassificationList,
    operation_id="createClassification",
    summary="Label texts with a fine-tuned classifier",
    responses={503: {"description": "no inference worker answered in time"}},
)
async def create_classification(body: ClassificationCreate, owner: Owner) -> ClassificationList:
    """Ask an inference worker for labels and wait (awaited: the wait holds no thread)."""
    texts = [body.input] if isinstance(body.input, str) else body.input
    location = await run_in_threadpool(model_location, owner, body.model)
    request = {"model": body.model, "location": location, "input": texts}
    answer = await run_classification(owner, request, get_settings().completion_timeout_seconds)
    if "error" in answer:
        error = answer["error"] or {}
        raise ApiError(
            400, str(error.get("message", "classification failed")), param=error.get("param")
        )
    return ClassificationList(
        model=body.model, data=[ClassificationOut(**item) for item in answer.get("data", [])]
    )
