"""A dry run: the plan a job would run, resolved in a worker without creating the job."""

from typing import Any

from shared.settings import get_settings
from shared.storage import get_storage
from worker.run_job import JobFailure, JobSnapshot, method_message, prepare
from worker.throughput import time_estimate


def handle_plan(request: dict[str, Any]) -> dict[str, Any]:
    """Token counts, steps, resolved values and the memory estimate; or {"error": ...}."""
    from worker.training.device import pick_device
    from worker.training.memory import available_bytes

    snapshot = JobSnapshot(
        id=request["id"],
        owner=request["owner"],
        model=request["model"],
        training_file=request["training_file"],
        validation_file=request.get("validation_file"),
        suffix=request.get("suffix"),
        seed=int(request["seed"]),
        hyperparameters=dict(request.get("hyperparameters") or {}),
        options=dict(request.get("options") or {}),
    )
    try:
        plan = prepare(snapshot, get_settings(), get_storage(), check_memory=False)
    except JobFailure as failure:
        return {"error": failure.error}
    device = str(pick_device())
    available = available_bytes(device)
    needed = plan.summary["memory_estimate"]["total_bytes"]
    method = plan.spec.method
    lora = method.resolved_lora()
    return {
        "hyperparameters": plan.spec.shown(),
        "method": {**method.model_dump(mode="json"), "lora": lora and lora.model_dump()},
        "plan": {
            **plan.summary,
            **time_estimate(snapshot.model, method.training_method, plan.summary["trained_tokens"]),
        },
        "message": f"{plan.message()}. {method_message(plan.summary)}",
        "device": device,
        "available_bytes": available,
        "fits": available is None or needed <= available,
    }
