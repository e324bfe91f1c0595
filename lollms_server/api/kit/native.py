"""Native request shapes and parameters built from a family's translated fields."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from lollms_server.core.errors import BadRequestError

M = TypeVar("M", bound=BaseModel)


def native(model: type[M], **fields: Any) -> M:
    """A native request shape built from translated fields; what it refuses is the client's
    400 (a name too long, a mime type too long...), never a 500."""
    try:
        return model(**fields)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem.get("loc", ())) or None
        raise BadRequestError(
            f"Invalid request: {where or 'body'}: {problem.get('msg', 'invalid')}", param=where
        ) from None


def given(**values: Any) -> dict[str, Any]:
    """The native parameters a client set, in order (a None value is not set: the binding's
    default stands)."""
    return {key: value for key, value in values.items() if value is not None}


def structured_output(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON schema an OpenAI ``response_format`` asks for (``json_object``: any object), or
    None; Responses' ``text.format`` is read through it too (its errors name
    ``response_format``, as they always have)."""
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise BadRequestError(
                "response_format json_schema needs json_schema.schema, an object.",
                param="response_format.json_schema.schema",
            )
        return schema
    raise BadRequestError(
        "response_format.type must be text, json_object or json_schema.", param="response_format.type"
    )
