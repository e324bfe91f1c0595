"""Stop sequences (hardening round 3, T3-03): bounded on every route, and matched at a cost per
character that does not grow with the number or length of the stops."""

from __future__ import annotations

import random
import time

import pytest

from lollms_server.core.bindings.text import StopTextBuffer
from lollms_server.core.errors import BadRequestError
from lollms_server.core.generation.text_inputs import validate_text_parameters
from lollms_server.core.stops import MAX_STOP_CHARS, MAX_STOP_TOTAL_CHARS, MAX_STOPS


def reference(stops: list[str], text: str) -> tuple[str, bool]:
    """The first stop to end in ``text`` (the longest of those ending there) cuts it."""
    for end in range(1, len(text) + 1):
        ending = [stop for stop in stops if stop and text[:end].endswith(stop)]
        if ending:
            return text[: end - max(map(len, ending))], True
    return text, False


def test_the_matcher_agrees_with_the_definition_however_the_text_is_split() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        stops = [
            "".join(rng.choice("ab c") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(0, 4))
        ]
        text = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 24)))
        buffer, out, stopped, index = StopTextBuffer(stops), "", False, 0
        while index < len(text) and not stopped:
            size = rng.randint(1, 4)
            piece, stopped = buffer.push(text[index : index + size])
            out += piece
            index += size
            # only what may still begin a stop is held back
            assert not buffer.pending or any(stop.startswith(buffer.pending) for stop in stops if stop)
        if not stopped:
            out += buffer.flush()
        assert (out, stopped) == reference(stops, text), (stops, text)


def test_holding_and_cutting() -> None:
    buffer = StopTextBuffer(["</end>", "STOP"])
    assert buffer.push("Hello </") == ("Hello ", False)
    assert buffer.push("e") == ("", False)
    assert buffer.push("x") == ("</ex", False)
    assert buffer.push(" and ST") == (" and ", False)
    assert buffer.push("OP after") == ("", True)
    assert StopTextBuffer([]).push("abc") == ("abc", False)


def test_the_findings_stop_list_costs_little_per_token() -> None:
    """T3-03's attack: many long stops the output keeps matching a prefix of. The old matcher
    took about 1 s per token at 30,000 x 300; this one walks each character once."""
    digits = ("0123456789" * 40)[:300]
    stops = [f"x{index}" + digits for index in range(3000)] + [digits + "Z"]
    buffer = StopTextBuffer(stops)
    started = time.perf_counter()
    for _ in range(200):
        out, stopped = buffer.push("0123456789")
        assert not stopped
    assert len(buffer.pending) < 301  # bounded by the longest stop
    assert time.perf_counter() - started < 1.0  # the old matcher: about 4 s per token here


@pytest.mark.parametrize(
    "stop",
    [
        ["s"] * (MAX_STOPS + 1),
        ["x" * (MAX_STOP_CHARS + 1)],
        ["y" * MAX_STOP_CHARS] * (MAX_STOP_TOTAL_CHARS // MAX_STOP_CHARS + 1),
        "z" * (MAX_STOP_CHARS + 1),
    ],
)
def test_stop_lists_past_the_bounds_are_400(stop: object) -> None:
    with pytest.raises(BadRequestError) as caught:
        validate_text_parameters({"stop": stop})
    assert caught.value.param == "parameters.stop"


def test_stop_lists_within_the_bounds_pass() -> None:
    stops = ["a" * (MAX_STOP_TOTAL_CHARS // MAX_STOPS)] * MAX_STOPS
    assert validate_text_parameters({"stop": stops})["stop"] == stops


def test_a_personality_with_anti_prompts_past_the_bounds_is_refused() -> None:
    from pydantic import ValidationError

    from lollms_server.core.personalities import PersonalityConfig

    assert PersonalityConfig(name="p", anti_prompts=["!@>user:"] * 3).anti_prompts == ["!@>user:"] * 3
    with pytest.raises(ValidationError):
        PersonalityConfig(name="p", anti_prompts=[f"stop {index}" for index in range(MAX_STOPS + 1)])
