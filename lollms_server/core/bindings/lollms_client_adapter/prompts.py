"""Our text requests in lollms_client's terms: ``generate_text`` keywords and, for bindings
without ``generate_from_messages``, a prompt built from the chat messages."""

from __future__ import annotations

from typing import Any

from lollms_server.core.bindings.contract import TextRequest

TEXT_PARAMETERS = {
    "max_tokens": "n_predict",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n",
    "seed": "seed",
}
"""Our text parameter -> lollms_client's generate_text keyword."""


def generation_kwargs(request: TextRequest) -> dict[str, Any]:
    """Streaming keywords of a generation, with the parameters lollms_client knows."""
    kwargs: dict[str, Any] = {"stream": True, "think": False}
    for ours, theirs in TEXT_PARAMETERS.items():
        if request.parameters.get(ours) is not None:
            kwargs[theirs] = request.parameters[ours]
    return kwargs


def prompt_of(request: TextRequest) -> tuple[str, str, list[str]]:
    """(prompt, system prompt, image data URLs) for ``generate_text``: one user turn as it is,
    several as a ``!@>user:``/``!@>assistant:`` discussion."""
    if request.prompt is not None:
        return request.prompt, "", []
    system: list[str] = []
    turns: list[tuple[str, str]] = []
    images: list[str] = []
    for message in request.messages:
        content = message.get("content")
        text = content if isinstance(content, str) else ""
        if isinstance(content, list):
            for part in content:
                if part.get("type") == "text":
                    text += str(part.get("text", ""))
                elif part.get("type") == "image_url":
                    images.append(str((part.get("image_url") or {}).get("url", "")))
        if message.get("role") == "system":
            system.append(text)
        else:
            turns.append((str(message.get("role")), text))
    if len(turns) == 1 and turns[0][0] == "user":
        return turns[0][1], "\n".join(system), images
    prompt = "".join(f"!@>{role}: {text}\n" for role, text in turns) + "!@>assistant: "
    return prompt, "\n".join(system), images
