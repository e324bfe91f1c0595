"""ArtBot: text binding -> image prompt, image binding -> picture. Returns the text and the image."""

from __future__ import annotations

from typing import Any

IMAGE_PARAMETERS = ("width", "height", "steps", "guidance_scale", "negative_prompt", "seed")


async def run_workflow(prompt: str, params: dict[str, Any], context: dict[str, Any]) -> list[dict[str, Any]]:
    generate = context["generate"]
    personality = context["personality"].config
    written = await generate(
        f"{personality.personality_conditioning}\nDescribe one image for this idea: {prompt}",
        "ttt",
        parameters={"max_tokens": int(params.get("max_tokens", personality.model_n_predicts or 80))},
    )
    description = str(written[0].data).strip() or prompt
    images = await generate(
        description,
        "tti",
        binding_name=params.get("image_binding"),
        model_name=params.get("image_model"),
        parameters={key: params[key] for key in IMAGE_PARAMETERS if key in params},
    )
    return [
        {"type": "text", "data": description, "mime_type": "text/plain", "metadata": {"role": "image_prompt"}},
        *(image.model_dump() for image in images),
    ]
