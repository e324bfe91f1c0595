"""Tiny real models built locally with random weights (no hub download exists in tests).

``build_tiny_gguf`` writes a llama-architecture GGUF with a byte-level BPE tokenizer trained
on a few sentences and a chat template; ``llama_cpp.Llama(model_path=...)`` loads it through
the same code a user's real model goes through. Seeded builds are byte-identical.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! This is a tiny language model used in tests.",
    "lollms server streams text, images, music, speech and video.",
    "Numbers 0123456789 and punctuation: ,.;:!?()[]{}'\"-_/\\@#$%^&*+=<>|~`",
    "Bonjour, ça va? Grüße aus Köln. こんにちは 世界. Привет мир.",
]
SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_tokenizer(vocab_size: int = 512):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(SENTENCES, trainer=trainer)
    return tokenizer


def build_tiny_gguf(
    path: Path,
    *,
    hidden: int = 64,
    intermediate: int = 128,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    context: int = 4096,
    seed: int = 0,
) -> Path:
    """Write a tiny llama GGUF (F32, random weights) at ``path`` and return it."""
    import json

    import gguf

    tokenizer = train_tokenizer()
    vocab: dict[str, int] = tokenizer.get_vocab()
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    merges = [" ".join(merge) if isinstance(merge, list) else merge for merge in merges]
    token_types = [
        gguf.TokenType.CONTROL if token in SPECIAL_TOKENS else gguf.TokenType.NORMAL for token in tokens
    ]
    rng = np.random.default_rng(seed)
    n_vocab = len(tokens)
    head_dim = hidden // heads

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.5 / np.sqrt(shape[-1])).astype(np.float32)

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-test-llama")
    writer.add_context_length(context)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(intermediate)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab["<|endoftext|>"])
    writer.add_eos_token_id(vocab["<|im_end|>"])
    writer.add_pad_token_id(vocab["<|pad|>"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    writer.add_tensor("token_embd.weight", weight(n_vocab, hidden))
    writer.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    writer.add_tensor("output.weight", weight(n_vocab, hidden))
    for block in range(layers):
        prefix = f"blk.{block}"
        writer.add_tensor(f"{prefix}.attn_norm.weight", np.ones(hidden, dtype=np.float32))
        writer.add_tensor(f"{prefix}.attn_q.weight", weight(hidden, hidden))
        writer.add_tensor(f"{prefix}.attn_k.weight", weight(kv_heads * head_dim, hidden))
        writer.add_tensor(f"{prefix}.attn_v.weight", weight(kv_heads * head_dim, hidden))
        writer.add_tensor(f"{prefix}.attn_output.weight", weight(hidden, hidden))
        writer.add_tensor(f"{prefix}.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
        writer.add_tensor(f"{prefix}.ffn_gate.weight", weight(intermediate, hidden))
        writer.add_tensor(f"{prefix}.ffn_up.weight", weight(intermediate, hidden))
        writer.add_tensor(f"{prefix}.ffn_down.weight", weight(hidden, intermediate))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
