"""Model names as the API families receive them: ``instance`` or ``instance/model``."""

from __future__ import annotations


def split_model(model: str | None) -> tuple[str | None, str | None]:
    """``instance`` or ``instance/model`` (the model part may itself contain slashes)."""
    if not model:
        return None, None
    instance, _, rest = model.partition("/")
    return instance, rest or None
