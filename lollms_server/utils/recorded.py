"""What a generation records about its request in its outputs: an allow-list of parameter names,
bounded sizes. Used for every output's ``metadata``, the PNG text chunks of images and what
bindings write into their files, so that a request's unknown parameters or a long prompt are never
copied into every image and output of an answer (one 2 MB parameter and eight images once made
a 57 MB answer).

Unknown parameters still reach the binding that asked for them; they are only not recorded.
"""

from __future__ import annotations

import json
from typing import Any

RECORDED_PARAMETERS = frozenset({
    # media (core.generation.media_inputs.MediaParameters)
    "width", "height", "steps", "guidance_scale", "negative_prompt", "num_images", "strength",
    "num_frames", "fps", "duration", "seed", "output_format", "language", "scheduler",
    # text (core.generation.text_inputs.TextParameters)
    "max_tokens", "temperature", "top_k", "top_p", "repeat_penalty", "min_p", "presence_penalty",
    "frequency_penalty", "stop", "system_message",
    # common names bindings read
    "voice", "speaker", "sample_rate", "quality", "style", "size", "response_format",
})  # fmt: skip
"""Parameter names recorded in outputs; the others are passed to the binding, not recorded."""

MAX_VALUE_CHARS = 1000
"""A recorded string is cut to this many characters; any other value larger as JSON is left out."""
MAX_PROMPT_CHARS = 1000
"""The prompt as recorded in an output or file (the whole prompt is the client's own)."""
MAX_METADATA_CHARS = 16 * 1024
"""One output's metadata, as JSON, beyond what its own size allows (``to_output_data`` gives each
output this plus 4 characters per byte of its data): values past it are left out, named in
``truncated``. An answer's size follows its outputs, whatever its request carried."""
ELLIPSIS = "…"


def recorded_prompt(prompt: str) -> str:
    """``prompt`` cut to :data:`MAX_PROMPT_CHARS` (an ellipsis marks the cut)."""
    return prompt if len(prompt) <= MAX_PROMPT_CHARS else prompt[:MAX_PROMPT_CHARS] + ELLIPSIS


def recorded_value(value: Any) -> tuple[bool, Any]:
    """(kept, value): strings cut to :data:`MAX_VALUE_CHARS`; other values kept when their JSON
    is at most that long."""
    if isinstance(value, str):
        return True, value if len(value) <= MAX_VALUE_CHARS else value[:MAX_VALUE_CHARS] + ELLIPSIS
    if value is None or isinstance(value, bool | int | float):
        return True, value
    size = json_size(value)
    return size is not None and size <= MAX_VALUE_CHARS, value


def json_size(value: Any) -> int | None:
    """Characters of ``value`` as JSON; None when it cannot be written (too deep, a cycle)."""
    try:
        return len(json.dumps(value, default=str))
    except (TypeError, ValueError, RecursionError):
        return None


def recorded_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """The allow-listed parameters of a request, each bounded (see :func:`recorded_value`)."""
    recorded: dict[str, Any] = {}
    for name, value in parameters.items():
        if name in RECORDED_PARAMETERS:
            kept, bounded = recorded_value(value)
            if kept:
                recorded[name] = bounded
    return recorded


def bounded_metadata(metadata: dict[str, Any], budget: int = MAX_METADATA_CHARS) -> dict[str, Any]:
    """``metadata`` (one output's, a binding's included) within ``budget`` characters of JSON:
    ``parameters`` keeps its allow-listed names (:func:`recorded_parameters`), ``prompt`` and
    every other string are cut (:func:`recorded_prompt`, :data:`MAX_VALUE_CHARS`: they echo the
    request), other values (timings, usage, a transcription's segments) are kept while they
    fit; what does not fit is left out and named in ``truncated``."""
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    used = 2
    for name, value in metadata.items():
        name = str(name)[:100]
        if name == "parameters" and isinstance(value, dict):
            value = recorded_parameters(value)
        elif name == "prompt" and isinstance(value, str):
            value = recorded_prompt(value)
        elif isinstance(value, str):
            value = recorded_value(value)[1]
        size = json_size(value)
        if size is None or used + size + len(name) + 4 > budget:
            dropped.append(name)
            continue
        kept[name] = value
        used += size + len(name) + 4
    if dropped:
        kept["truncated"] = dropped[:20]
    return kept
