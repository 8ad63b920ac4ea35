"""The generate task body: validate the request, call the engine, return JSON."""

import logging
from typing import Any

log = logging.getLogger(__name__)


def handle_generate(request: dict[str, Any]) -> dict[str, Any]:
    """Run a completion request; errors come back as {"error": {...}}, never a traceback."""
    from worker.training.generate import generate
    from worker.training.models import ModelUnavailable

    try:
        return generate(
            request["location"],
            list(request["prompts"]),
            max_tokens=int(request.get("max_tokens") or 16),
            temperature=float(request.get("temperature", 1.0)),
            top_p=float(request.get("top_p", 1.0)),
            n=int(request.get("n") or 1),
            stop=request.get("stop"),
            seed=request.get("seed"),
            echo=bool(request.get("echo", False)),
            top_k=request.get("top_k"),
        )
    except ModelUnavailable as exc:
        return {"error": {"message": str(exc), "param": "model"}}
    except (ValueError, OSError) as exc:
        log.warning("completion for %s failed: %s", request.get("model"), exc)
        return {"error": {"message": f"{request.get('model')}: {exc}", "param": None}}
