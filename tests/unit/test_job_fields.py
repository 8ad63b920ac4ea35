"""Each job field, declared once in shared.spec, shows up with its bounds where clients look."""

from typing import Any

import pytest
from pydantic import BaseModel

from api.app import create_app
from shared.spec import (
    ExtensionHyperparameters,
    Hyperparameters,
    MethodOptions,
    TaskOptions,
    TrainingOptions,
    TrainingSpec,
)

TOP_LEVEL_GROUPS = (ExtensionHyperparameters, TaskOptions, MethodOptions)


@pytest.fixture(scope="module")
def schemas() -> dict[str, Any]:
    return create_app().openapi()["components"]["schemas"]


def numeric_bounds(prop: dict[str, Any]) -> dict[str, float]:
    """minimum/maximum/exclusiveMinimum of a property, looking inside anyOf branches."""
    found: dict[str, float] = {}
    for branch in [prop, *prop.get("anyOf", [])]:
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if key in branch:
                found[key] = branch[key]
    return found


def model_bounds(model: type[BaseModel], name: str) -> dict[str, float]:
    """The same bounds read from the model's own JSON schema (its declaration)."""
    return numeric_bounds(model.model_json_schema()["properties"][name])


@pytest.mark.parametrize("group", TOP_LEVEL_GROUPS, ids=lambda g: g.__name__)
def test_every_option_is_in_the_create_body_with_its_bounds(
    schemas: dict[str, Any], group: type[BaseModel]
) -> None:
    body = schemas["JobCreate"]["properties"]
    assert set(group.model_fields) <= set(body)
    for name in group.model_fields:
        assert numeric_bounds(body[name]) == model_bounds(group, name), name


def test_hyperparameters_object_lists_openai_and_extension_fields(
    schemas: dict[str, Any],
) -> None:
    props = schemas["Hyperparameters"]["properties"]
    expected = {"n_epochs", "batch_size", "learning_rate_multiplier"}
    assert set(props) == expected | set(ExtensionHyperparameters.model_fields)
    assert numeric_bounds(props["n_epochs"]) == {"minimum": 1, "maximum": 100}
    assert schemas["Hyperparameters"]["additionalProperties"] is False


def test_request_schemas_declare_no_defaults(schemas: dict[str, Any]) -> None:
    # A generated client sends every declared default, which would pin options the caller
    # never chose (and make a top-level value conflict with hyperparameters' default).
    for name in ("JobCreate", "Hyperparameters"):
        props = schemas[name]["properties"]
        assert [field for field, prop in props.items() if "default" in prop] == [], name
    assert "Default: 0.1." in schemas["JobCreate"]["properties"]["validation_split"]["description"]


def test_the_spec_reuses_the_groups_bounds() -> None:
    # Requested and resolved forms of one field share one declaration of its bounds.
    assert issubclass(TrainingSpec, TrainingOptions) and issubclass(TrainingSpec, TaskOptions)
    for name in ("n_epochs", "batch_size", "block_size", "gradient_accumulation_steps"):
        assert model_bounds(TrainingSpec, name) == model_bounds(Hyperparameters, name), name
    assert model_bounds(TrainingSpec, "max_length") == model_bounds(TaskOptions, "max_length")
