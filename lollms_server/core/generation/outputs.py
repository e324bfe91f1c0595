"""What a generation returns: OutputData for text and media, the stream's error event, and
the metrics of a finished generation (one epilogue for answers and streams)."""

from __future__ import annotations

import asyncio
from typing import Any

from lollms_server.core.bindings import MediaOutput, TextResult
from lollms_server.core.errors import BindingError, LollmsError
from lollms_server.core.generation.admission import Admission
from lollms_server.core.generation.provenance import provenance_text, stamp_images
from lollms_server.core.metrics import Metrics
from lollms_server.core.types import OutputData, StreamChunk
from lollms_server.utils.media import encode_base64
from lollms_server.utils.recorded import MAX_METADATA_CHARS, bounded_metadata, recorded_parameters


def _metadata(admission: Admission) -> dict[str, Any]:
    target, timings = admission.target, admission.timings
    metadata: dict[str, Any] = {
        "binding": target.name,
        "model": target.model,
        "generation_type": target.generation_type,
        "parameters": recorded_parameters(admission.parameters),  # an allow-list, bounded
        "seed": admission.parameters.get("seed"),
        "timings": timings.public(),
    }
    host_timings = admission.session.host_timings
    if host_timings is not None:  # measured by the pool's worker process or Ray actor
        metadata["worker_timings"] = {**host_timings, "compute_finished_at": timings.compute_finished_at}
    return metadata


def text_output(admission: Admission, result: TextResult) -> OutputData:
    metadata = _metadata(admission)
    metadata.update({"finish_reason": result.finish_reason, "usage": result.usage, **result.metadata})
    return OutputData(type="text", data=result.text, mime_type="text/plain", metadata=metadata)


async def media_outputs(admission: Admission, outputs: list[MediaOutput]) -> list[OutputData]:
    """A media generation's outputs as API outputs; every image passes the provenance step
    (text chunks, watermark: ``provenance``), in a thread."""
    if not outputs:
        raise BindingError(f"Binding '{admission.target.name}' returned no output.")
    metadata = _metadata(admission)
    if any(output.type == "image" for output in outputs):
        target = admission.target
        text = provenance_text(target.name, target.model, recorded_parameters(admission.parameters))
        outputs = await asyncio.to_thread(stamp_images, outputs, text, admission.provenance)
    return [to_output_data(output, metadata) for output in outputs]


def to_output_data(output: MediaOutput, metadata: dict[str, Any]) -> OutputData:
    """A binding's output as API output: bytes become raw base64. Its metadata (ours, the
    binding's spread on top) is bounded (``utils.recorded``) by a budget that grows with the
    output's own size: an answer's size follows its outputs, not what its request carried."""
    data = encode_base64(bytes(output.data)) if isinstance(output.data, bytes | bytearray) else output.data
    size = len(data) if isinstance(data, str) else 0
    return OutputData(
        type=output.type,
        data=data,
        mime_type=output.mime_type,
        metadata=bounded_metadata({**metadata, **output.metadata}, MAX_METADATA_CHARS + 4 * size),
    )


def final_chunk(outputs: list[OutputData], request_id: str) -> StreamChunk:
    return StreamChunk(
        type="final",
        content=[item.model_dump(mode="json") for item in outputs],
        metadata={"request_id": request_id},
    )


def error_chunk(exc: LollmsError) -> StreamChunk:
    return StreamChunk(
        type="error", content=exc.message, metadata={"type": exc.error_type, "status": exc.status_code}
    )


def record(metrics: Metrics | None, admission: Admission, result: TextResult | None = None) -> None:
    """Generation seconds and tokens, by binding and API key name (and the key's token quota);
    prompt tokens read from a binding's prompt cache or not."""
    tokens = tokens_of(result) if result is not None else 0
    admission.on_tokens(tokens)
    if metrics is not None:
        target = admission.target
        metrics.observe_generation(
            target.name, admission.principal_name, target.generation_type, admission.timings.compute, tokens
        )
        if result is not None and "prompt_tokens" in result.usage:
            prompt = int(result.usage.get("prompt_tokens", 0))
            cached = min(int(result.usage.get("cached_tokens", 0)), prompt)
            metrics.observe_prompt(target.name, prompt, cached)


def tokens_of(result: TextResult) -> int:
    return int(result.usage.get("completion_tokens", 0))
