"""The training-method extensions of a create-job body, validated into Job.options."""

from typing import Any

from pydantic import ValidationError

from api.errors import validation_error
from api.schemas import JobCreate
from shared.spec import METHOD_FIELDS, MethodOptions


def method_options(body: JobCreate) -> dict[str, Any]:
    """{"training_method", "trainable_layers", "lora", "sample_prompts"} as given, checked."""
    given = {name: getattr(body, name) for name in METHOD_FIELDS if getattr(body, name, None)
             is not None}  # fmt: skip
    try:
        options = MethodOptions.model_validate(given)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None
    return options.model_dump(mode="json", exclude_unset=True)


def shown_method(options: dict[str, Any] | None) -> dict[str, Any]:
    """The method options with defaults filled in, as the job object shows them."""
    given = {name: value for name, value in (options or {}).items() if name in METHOD_FIELDS}
    method = MethodOptions.model_validate(given)
    shown = method.model_dump(mode="json")
    lora = method.resolved_lora()
    shown["lora"] = lora.model_dump(mode="json") if lora else None
    if method.training_method != "transfer":
        shown.pop("trainable_layers")
    return shown
