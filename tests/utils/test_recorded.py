"""T3-06: what an output records of its request is an allow-list of bounded values."""

from __future__ import annotations

import json

from lollms_server.core.generation.media_inputs import MediaParameters
from lollms_server.core.generation.text_inputs import TextParameters
from lollms_server.utils.recorded import (
    MAX_METADATA_CHARS,
    RECORDED_PARAMETERS,
    bounded_metadata,
    recorded_parameters,
    recorded_prompt,
)


def test_every_parameter_the_server_checks_is_recorded() -> None:
    assert set(MediaParameters.model_fields) <= RECORDED_PARAMETERS
    assert set(TextParameters.model_fields) <= RECORDED_PARAMETERS


def test_unknown_parameters_are_left_out_and_values_bounded() -> None:
    recorded = recorded_parameters(
        {
            "width": 64,
            "seed": 3,
            "note": "n" * 2_000_000,
            "negative_prompt": "x" * 5000,
            "stop": ["a"] * 5000,
            "temperature": 0.5,
        }
    )
    assert set(recorded) == {"width", "seed", "negative_prompt", "temperature"}
    assert len(recorded["negative_prompt"]) == 1001 and recorded["negative_prompt"].endswith("…")
    assert recorded_prompt("p" * 200_000) == "p" * 1000 + "…" and recorded_prompt("short") == "short"


def test_metadata_stays_within_its_budget_whatever_a_binding_adds() -> None:
    deep: dict[str, object] = {"leaf": 1}
    for _ in range(5000):
        deep = {"a": deep}
    metadata = {
        "binding": "images",
        "prompt": "p" * 200_000,
        "parameters": {"width": 64, "note": "n" * 100_000},
        "timings": {"total": 1.0},
        "deep": deep,  # too deep to write as JSON: left out, no RecursionError
        "echo": ["n" * 1000] * 100,  # a binding's copy of a request list
        **{f"extra_{i}": "v" * 900 for i in range(100)},
    }
    bounded = bounded_metadata(metadata)
    assert len(json.dumps(bounded)) < MAX_METADATA_CHARS + 1000
    assert bounded["parameters"] == {"width": 64} and bounded["timings"] == {"total": 1.0}
    assert len(bounded["prompt"]) == 1001
    assert {"deep", "echo"} <= set(bounded["truncated"]) and "deep" not in bounded and "echo" not in bounded


def test_a_transcription_keeps_its_segments() -> None:
    """What a binding derives from its output (segments) stays when the output's size allows it."""
    segments = [{"text": "word " * 10, "start": i, "end": i + 1} for i in range(400)]
    text = " ".join(segment["text"] for segment in segments)
    bounded = bounded_metadata({"segments": segments}, MAX_METADATA_CHARS + 4 * len(text))
    assert bounded["segments"] == segments
