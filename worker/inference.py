"""The generate task body: validate the request, call the engine, return JSON."""

import logging
import time
from typing import Any

from shared.storage import STORED_LOCATION, StorageError, get_storage

log = logging.getLogger(__name__)


def local_location(location: str) -> str:
    """A stored set fetched into this host's cache (a folder); base models as given."""
    if location.startswith(STORED_LOCATION):
        return str(get_storage().fetch_set(location.removeprefix(STORED_LOCATION)))
    return location


def deadline_error(model: Any) -> dict[str, Any]:
    """The answer for a request whose deadline passed: the API has stopped waiting."""
    message = f"{model}: generation did not finish before the request's deadline"
    return {"error": {"message": message, "param": None, "code": "deadline_exceeded"}}


def handle_generate(request: dict[str, Any]) -> dict[str, Any]:
    """Run a completion request; errors come back as {"error": {...}}, never a traceback."""
    from worker.training.generate import DeadlineExceeded, generate
    from worker.training.model_loading import ModelUnavailable

    deadline = request.get("deadline")
    if deadline is not None and time.time() >= deadline:
        return deadline_error(request.get("model"))
    try:
        location = local_location(request["location"])
    except StorageError as exc:
        return {"error": {"message": f"{request.get('model')}: {exc}", "param": "model"}}
    if _is_classifier(location):
        return {
            "error": {
                "message": f"{request.get('model')} is a classifier, not a text "
                "generator; use POST /v1/classifications",
                "param": "model",
            }
        }
    try:
        return generate(
            location,
            list(request["prompts"]),
            max_tokens=int(request.get("max_tokens") or 16),
            temperature=float(request.get("temperature", 1.0)),
            top_p=float(request.get("top_p", 1.0)),
            n=int(request.get("n") or 1),
            stop=request.get("stop"),
            seed=request.get("seed"),
            echo=bool(request.get("echo", False)),
            top_k=request.get("top_k"),
            deadline=deadline,
        )
    except DeadlineExceeded:
        return deadline_error(request.get("model"))
    except ModelUnavailable as exc:
        return {"error": {"message": str(exc), "param": "model"}}
    except (ValueError, OSError) as exc:
        log.warning("completion for %s failed: %s", request.get("model"), exc)
        return {"error": {"message": f"{request.get('model')}: {exc}", "param": None}}


def _is_classifier(location: str) -> bool:
    from worker.training.classify import is_classifier

    try:
        return is_classifier(location)
    except (OSError, ValueError):
        return False  # a missing or hub model: generate() reports it in its own words


def handle_classify(request: dict[str, Any]) -> dict[str, Any]:
    """Run a classification request; errors come back as {"error": {...}}, never a traceback."""
    from worker.training.classify import classify

    model = request.get("model")
    if request.get("deadline") is not None and time.time() >= request["deadline"]:
        return deadline_error(model)
    try:
        location = local_location(request["location"])
        if not _is_classifier(location):
            message = (
                f'{model} is not a classifier; fine-tune one with task "classification" '
                "(or use POST /v1/completions for text)"
            )
            return {"error": {"message": message, "param": "model"}}
        data = classify(location, list(request["input"]))
    except (ValueError, OSError, StorageError) as exc:
        log.warning("classification for %s failed: %s", model, exc)
        return {"error": {"message": f"{model}: {exc}", "param": None}}
    return {"data": data}
