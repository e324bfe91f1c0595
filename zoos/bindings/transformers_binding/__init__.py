"""transformers binding: causal LMs (streamed text) and encoder models (embeddings).

Generation runs ``model.generate`` in a worker thread with a ``TextIteratorStreamer``; a
stopping criterion counts tokens and stops generation between tokens when the client leaves
or a stop sequence was reached.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncGenerator, Iterator
from typing import Any

from lollms_server.core.bindings import (
    BadRequestError,
    BindingContext,
    CancelToken,
    StopTextBuffer,
    TextChunk,
    TextRequest,
)
from lollms_server.core.torch_models import LoadedTorchModel, TorchBinding

logger = logging.getLogger("lollms_bindings.transformers_binding")

BindingName = "TransformersBinding"


class LoadedModel(LoadedTorchModel):
    def __init__(self, model: Any, tokenizer: Any, causal: bool) -> None:
        super().__init__(model)
        self.model = model
        self.tokenizer = tokenizer
        self.causal = causal


class TransformersBinding(TorchBinding):
    def __init__(self, context: BindingContext) -> None:
        super().__init__(context)
        import transformers  # noqa: F401 - fail at start-up when missing

    async def list_available_models(self) -> list[dict[str, Any]]:
        return await self.scan_models(
            "config.json", lambda config: {"architectures": config.get("architectures", [])}
        )

    def load_from(self, location: str) -> LoadedModel:
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

        config = AutoConfig.from_pretrained(location)
        causal = any(name.endswith("ForCausalLM") for name in (config.architectures or []))
        model_class = AutoModelForCausalLM if causal else AutoModel
        model = model_class.from_pretrained(location, dtype=self.dtype).to(self.device).eval()
        return LoadedModel(model, AutoTokenizer.from_pretrained(location), causal)

    async def get_model_info(self, model_name: str | None) -> dict[str, Any]:
        info = self.base_info(model_name)
        loaded = self._models.get(model_name or "")
        if loaded is not None:
            config = loaded.model.config
            info.update(
                causal=loaded.causal,
                context_size=getattr(config, "max_position_embeddings", None),
                vocab_size=getattr(config, "vocab_size", None),
                has_chat_template=bool(getattr(loaded.tokenizer, "chat_template", None)),
            )
        return info

    def _loaded(self, model_name: str, causal: bool) -> LoadedModel:
        loaded: LoadedModel = self.loaded(model_name)
        if loaded.causal != causal:
            kind = "a text generation" if causal else "an embedding"
            raise BadRequestError(f"Model '{model_name}' is not {kind} model.", param="model_name")
        return loaded

    # ---- text ---------------------------------------------------------------------
    async def stream_text(
        self, model_name: str, request: TextRequest, cancel: CancelToken
    ) -> AsyncGenerator[TextChunk, None]:
        loaded = self._loaded(model_name, causal=True)
        produce = self._producer(loaded, request, cancel)
        async for chunk in self.stream_from_thread(produce, cancel):
            yield chunk

    def _producer(self, loaded: LoadedModel, request: TextRequest, cancel: CancelToken) -> Any:
        def produce() -> Iterator[TextChunk]:
            import torch
            from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

            tokenizer, model = loaded.tokenizer, loaded.model
            parameters = request.parameters
            if request.prompt is not None or not getattr(tokenizer, "chat_template", None):
                text = request.prompt if request.prompt is not None else _plain_prompt(request.messages)
                inputs = tokenizer(text, return_tensors="pt")
            else:
                inputs = tokenizer.apply_chat_template(
                    request.messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
                )
            inputs = {key: value.to(model.device) for key, value in inputs.items()}
            prompt_tokens = int(inputs["input_ids"].shape[-1])
            stop = threading.Event()

            class Watch(StoppingCriteria):
                def __init__(self) -> None:
                    self.generated = 0

                def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                    self.generated += 1
                    done = cancel.is_set() or stop.is_set()
                    return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

            watch = Watch()
            streamer = TextIteratorStreamer(
                tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600
            )
            temperature = float(parameters.get("temperature", 0.7))
            max_tokens = int(parameters.get("max_tokens") or self.settings["default_max_tokens"])
            kwargs: dict[str, Any] = {
                **inputs,
                "max_new_tokens": max_tokens,
                "do_sample": temperature > 0,
                "streamer": streamer,
                "stopping_criteria": StoppingCriteriaList([watch]),
                "pad_token_id": tokenizer.pad_token_id or tokenizer.eos_token_id,
            }
            if temperature > 0:
                kwargs.update(
                    temperature=temperature,
                    top_k=int(parameters.get("top_k", 40)),
                    top_p=float(parameters.get("top_p", 0.95)),
                )
            if parameters.get("repeat_penalty"):
                kwargs["repetition_penalty"] = float(parameters["repeat_penalty"])
            if parameters.get("ignore_eos") and tokenizer.eos_token_id is not None:
                kwargs["suppress_tokens"] = [tokenizer.eos_token_id]
            failure: list[BaseException] = []

            def run() -> None:
                try:
                    with torch.inference_mode():
                        model.generate(**kwargs)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the producer
                    failure.append(exc)
                    streamer.end()

            with loaded.lock:
                torch.manual_seed(int(parameters.get("seed", 0)))
                worker = threading.Thread(target=run, name="lollms-transformers-generate", daemon=True)
                worker.start()
                buffer = StopTextBuffer(request.stop)
                finish = "length"
                ended = False
                try:
                    for piece in streamer:
                        text, stopped = buffer.push(piece)
                        if text:
                            yield TextChunk(text)
                        if stopped:
                            finish = "stop"
                            break
                        if cancel.is_set():
                            break
                    else:
                        ended = True
                finally:
                    stop.set()
                    if not ended:  # left early: let generate() see the stop and end the stream
                        for _ in streamer:
                            pass
                    worker.join()
                if failure:
                    raise failure[0]
                if finish == "length":
                    tail = buffer.flush()
                    if tail:
                        yield TextChunk(tail)
                    if watch.generated < max_tokens:
                        finish = "stop"  # ended on the end-of-sequence token
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": watch.generated}
                yield TextChunk("", finish, usage)

        return produce

    async def tokenize(self, model_name: str, text: str) -> list[int]:
        loaded = self._loaded(model_name, causal=True)
        tokens: list[int] = await self.run_blocking(loaded.tokenizer.encode, text, add_special_tokens=False)
        return tokens

    async def detokenize(self, model_name: str, tokens: list[int]) -> str:
        loaded = self._loaded(model_name, causal=True)
        size = len(loaded.tokenizer)
        bad = next((token for token in tokens if not 0 <= token < size), None)
        if bad is not None:
            raise BadRequestError(
                f"Token id {bad} is outside the vocabulary (0..{size - 1}).", param="tokens"
            )
        text: str = await self.run_blocking(loaded.tokenizer.decode, tokens)
        return text

    # ---- embeddings ----------------------------------------------------------------
    async def embed(self, model_name: str, texts: list[str]) -> list[list[float]]:
        loaded = self._loaded(model_name, causal=False)

        def run() -> list[list[float]]:
            import torch

            with loaded.lock, torch.inference_mode():
                batch = loaded.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
                batch = {key: value.to(loaded.model.device) for key, value in batch.items()}
                hidden = loaded.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
            vectors: list[list[float]] = pooled.cpu().tolist()
            return vectors

        return await self.run_blocking(run)


def _plain_prompt(messages: list[dict[str, Any]]) -> str:
    lines = [
        f"{message['role']}: {message['content']}"
        for message in messages
        if isinstance(message["content"], str)
    ]
    return "\n".join([*lines, "assistant:"])
