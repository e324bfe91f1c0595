"""The text tool protocol: a linear, capped call parser (finding #17) and result texts that never raise."""

from __future__ import annotations

import json
import random
import re
import time
from types import SimpleNamespace
from typing import Any

import pytest

from lollms_server.core.bindings import CancelToken, TextRequest, TextResult
from lollms_server.core.generation import tools
from lollms_server.core.generation.tools import (
    MAX_RESULT_CHARS,
    MAX_SCAN_CHARS,
    MAX_TOOL_CALLS,
    _result_text,
    parse_tool_calls,
    single_turn,
    strip_tool_calls,
    tool_call_text,
    tool_result_text,
)

# What the parser replaced, kept here as the reference for well-formed (and malformed) input.
FORMER = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)


def former_parse(text: str) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    for match in FORMER.finditer(text):
        try:
            data = json.loads(match.group(1))
        except json.JSONDecodeError:
            calls.append({"name": "", "arguments": {}, "error": "the call is not valid JSON"})
            continue
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            calls.append({"name": "", "arguments": {}, "error": "a call needs a 'name'"})
            continue
        calls.append({"name": data["name"], "arguments": data.get("arguments", {})})
    return calls


def test_well_formed_calls_are_read_as_before() -> None:
    text = (
        "Let me compute.\n"
        '<tool_call>{"name": "utilities.calculate", "arguments": {"expression": "2+2"}}</tool_call>\n'
        '<tool_call>\n  {"name": "utilities.days_between",\n'
        '   "arguments": {"start_date": "2024-01-01", "end_date": "2024-02-01"}}  \n</tool_call>'
        '<tool_call>{"name": "m.echo", "arguments": {"text": "a </tool_call> b {}"}}</tool_call>'
        '<tool_call>{"name": "m.none"}</tool_call>'
        "<tool_call>{not json}</tool_call>"
        '<tool_call>{"arguments": {}}</tool_call>'
        "<tool_call>no object</tool_call> done."
    )
    calls = parse_tool_calls(text)
    assert calls == [
        {"name": "utilities.calculate", "arguments": {"expression": "2+2"}},
        {
            "name": "utilities.days_between",
            "arguments": {"start_date": "2024-01-01", "end_date": "2024-02-01"},
        },
        {"name": "m.echo", "arguments": {"text": "a </tool_call> b {}"}},
        {"name": "m.none", "arguments": {}},
        {"name": "", "arguments": {}, "error": "the call is not valid JSON"},
        {"name": "", "arguments": {}, "error": "a call needs a 'name'"},
    ]
    assert calls == former_parse(text)
    assert strip_tool_calls(text) == FORMER.sub("", text)
    assert strip_tool_calls(text) == "Let me compute.\n\n<tool_call>no object</tool_call> done."
    written = tool_call_text("m.f", {"x": [1, "</tool_call>"]})
    assert parse_tool_calls(written) == [{"name": "m.f", "arguments": {"x": [1, "</tool_call>"]}}]


def test_the_parser_agrees_with_the_former_regex_on_random_texts() -> None:
    pieces = [
        "<tool_call>",
        "</tool_call>",
        "{",
        "}",
        " ",
        "\n",
        "\u2003",
        '"name"',
        ":",
        '"a.b"',
        ",",
        '"arguments"',
        "{}",
        "x",
        "<tool_",
        "call>",
        '"',
    ]
    generator = random.Random(17)
    for _ in range(20_000):
        text = "".join(generator.choice(pieces) for _ in range(generator.randint(0, 30)))
        assert parse_tool_calls(text) == former_parse(text)[:MAX_TOOL_CALLS], text
        assert strip_tool_calls(text) == FORMER.sub("", text), text


def test_calls_per_answer_and_scanned_text_are_capped() -> None:
    call = '<tool_call>{"name": "m.f", "arguments": {}}</tool_call>'
    assert len(parse_tool_calls(call * 100)) == MAX_TOOL_CALLS == 32
    late = "x" * MAX_SCAN_CHARS + call
    assert parse_tool_calls(late) == [] and strip_tool_calls(late) == late
    assert parse_tool_calls("x" * (MAX_SCAN_CHARS - len(call)) + call) == [{"name": "m.f", "arguments": {}}]
    deep = "<tool_call>{" + '"a": ' + "[" * 100_000 + "]" * 100_000 + "}</tool_call>"
    assert parse_tool_calls(deep) == [{"name": "", "arguments": {}, "error": "the call is not valid JSON"}]


# The trigger of #17: an answer repeating an unclosed "<tool_call>{" (prompt injection: "repeat this
# 10 000 times"); the former regex took 0.2 s at 24 KB, 3.3 s at 96 KB, minutes at 1 MB.
HOSTILE_UNITS = [
    "<tool_call>{",
    "<tool_call>{ </tool_call>",
    '<tool_call>{"name": "m.f"',
    "<tool_call>x",
    "<tool_call>      ",
    "}   ",
    "<tool_call>{x}</tool_call>",
    '<tool_call>{"name": "m.f"}</tool_call>',
]


@pytest.mark.parametrize("unit", HOSTILE_UNITS)
def test_hostile_answers_parse_fast(unit: str) -> None:
    for size in (64 * 1024, 1024 * 1024):  # the first already took over a second with the regex
        text = unit * (size // len(unit))
        start = time.perf_counter()
        parse_tool_calls(text)
        parsed = time.perf_counter() - start
        strip_tool_calls(text)
        stripped = time.perf_counter() - start - parsed
        assert parsed < (0.1 if size < 100_000 else 1.0), (size, parsed)
        assert stripped < (0.1 if size < 100_000 else 1.0), (size, stripped)


class CountingPattern:
    """Wraps a compiled pattern and adds up the characters each search walked over."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.walked = 0
        self.searches = 0

    def search(self, text: str, pos: int = 0, endpos: int = 2**62) -> re.Match[str] | None:
        match = self.pattern.search(text, pos, endpos)
        self.walked += (match.end() if match else min(endpos, len(text))) - pos
        self.searches += 1
        return match


@pytest.mark.parametrize("unit", HOSTILE_UNITS)
def test_the_scan_walks_each_character_a_bounded_number_of_times(
    unit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Work counted rather than timed: every search of the parser and the stripper goes forward from
    # where the previous one stopped, so they walk at most about twice the text, whatever its shape.
    for size in (100 * 1024, 400 * 1024):
        text = unit * (size // len(unit))
        opening, closing = CountingPattern(tools._OPEN), CountingPattern(tools._CLOSE)
        monkeypatch.setattr(tools, "_OPEN", opening)
        monkeypatch.setattr(tools, "_CLOSE", closing)
        parse_tool_calls(text)
        assert 1 <= opening.searches <= MAX_TOOL_CALLS + 1  # the scan went through the counted patterns
        assert opening.walked + closing.walked <= 2 * len(text) + 100, (size, opening.walked, closing.walked)
        opening.walked = closing.walked = 0
        strip_tool_calls(text)
        assert opening.walked + closing.walked <= 2 * len(text) + 100, (size, opening.walked, closing.walked)
        monkeypatch.undo()


# -- single_turn keeps stripping calls from the text ---------------------------------------------------


class OneAnswer:
    def __init__(self, text: str) -> None:
        self.text = text

    def supports_native_tools(self, model: str) -> bool:
        return False

    async def generate_text(self, model: str, request: TextRequest, cancel: CancelToken) -> TextResult:
        return TextResult(text=self.text, usage={"completion_tokens": 3})


async def test_single_turn_returns_the_calls_and_the_text_without_them() -> None:
    answer = (
        'Sure. <tool_call>{"name": "utilities.calculate", "arguments": {"expression": "1+1"}}</tool_call> '
        "<tool_call>{broken}</tool_call>"
    )
    admission: Any = SimpleNamespace(binding=OneAnswer(answer), target=SimpleNamespace(model="m"))
    request = TextRequest(messages=[{"role": "user", "content": "1+1?"}])
    text, calls, usage = await single_turn(admission, request, [], CancelToken())
    assert text == "Sure."
    expected = {"name": "utilities.calculate", "arguments": {"expression": "1+1"}}
    assert calls == [{**expected, "id": "call_0_utilities_calculate"}]
    admission.binding = OneAnswer("no calls <tool_call>{x}</tool_call>")
    text, calls, _ = await single_turn(admission, request, [], CancelToken())
    assert calls == [] and text == "no calls <tool_call>{x}</tool_call>"
    hostile = "<tool_call>{" * 8_000  # 96 KB: over 3 s with the former regex
    admission.binding = OneAnswer(hostile)
    start = time.perf_counter()
    text, calls, _ = await single_turn(admission, request, [], CancelToken())
    assert calls == [] and text == hostile and time.perf_counter() - start < 0.5


# -- result texts never raise ---------------------------------------------------------------------------


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


@pytest.mark.parametrize(
    "value",
    [10**5000, {"n": 10**5000}, Unprintable(), {(1, 2): 3}, float("nan"), object()],
    ids=["huge-int", "nested-huge-int", "failing-str", "tuple-key", "nan", "object"],
)
def test_result_text_never_raises(value: Any) -> None:
    looped: list[Any] = []
    looped.append(looped)
    for item in (value, looped):
        text = _result_text(item)
        assert isinstance(text, str) and text
        assert isinstance(tool_result_text("m.f", item), str)


def test_long_results_are_cut_with_a_note_only_when_asked() -> None:
    assert _result_text({"a": 1}) == '{"a": 1}' and _result_text("plain") == "plain"
    long = "y" * (MAX_RESULT_CHARS + 10)
    cut = _result_text(long, MAX_RESULT_CHARS)
    assert cut.startswith("y" * MAX_RESULT_CHARS) and cut.endswith(
        f"[result cut: {len(long)} characters, only the first {MAX_RESULT_CHARS} are shown]"
    )
    assert len(cut) < MAX_RESULT_CHARS + 100
    assert _result_text(list(range(MAX_RESULT_CHARS)), MAX_RESULT_CHARS).endswith("are shown]")
    # a client's replayed tool turn (OpenAI API) is not the server's function result: kept whole
    assert long in tool_result_text("m.f", long)
    assert long not in tool_result_text("m.f", long, limit=MAX_RESULT_CHARS)
