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
