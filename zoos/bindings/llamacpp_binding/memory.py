"""What a GGUF model will hold once llama.cpp has loaded it, told from the file's header alone:
weight bytes per layer, the KV cache of ``parallel x n_ctx`` cells at the cache type, and a
(deliberately generous) compute buffer. The device arbiter reserves this before the load;
:func:`layers_that_fit` gives the largest ``n_gpu_layers`` that fits a number of free bytes.

The weights and KV numbers are exact (tests compare them with ``llama_model_size`` and the KV
buffer llama.cpp logs); the compute buffer is an upper bound of llama.cpp's graph reservation.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

MAGIC = b"GGUF"
MAX_STRING = 1 << 24
MAX_ITEMS = 1 << 26
MAX_TENSORS = 1 << 20
KEEP_ARRAY = 4096
"""Arrays longer than this (the vocabulary...) are skipped, their length kept."""

# ggml type id -> (elements per block, bytes per block)
GGML_TYPES: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
    15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18),
    21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4),
    27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66),
    39: (32, 17),
}  # fmt: skip
CACHE_TYPES = {"f32": 0, "f16": 1, "bf16": 30, "q8_0": 8, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7}
"""KV cache types llama.cpp accepts (``type_k`` / ``type_v``) -> ggml type id."""
CTX_PAD = 256
"""llama.cpp rounds each sequence's context up to a multiple of this."""
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_BLOCK = re.compile(r"^blk\.(\d+)\.")


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    type: int

    @property
    def nbytes(self) -> int:
        block, size = GGML_TYPES[self.type]
        count = 1
        for dim in self.shape:
            count *= dim
        return count // block * size


@dataclass
class GGUFHeader:
    metadata: dict[str, Any]
    tensors: list[Tensor] = field(default_factory=list)

    @property
    def arch(self) -> str:
        return str(self.metadata.get("general.architecture", "llama"))

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.arch}.{key}", default)

    @property
    def n_layer(self) -> int:
        return int(self.get("block_count", 0))

    def weight_bytes(self) -> int:
        return sum(tensor.nbytes for tensor in self.tensors)

    def layer_bytes(self) -> tuple[list[int], int, int]:
        """Weight bytes of each repeating block, of the output layer (output norm and head) and
        of the input layer (token embeddings, always on the CPU)."""
        blocks = [0] * self.n_layer
        output = inputs = 0
        for tensor in self.tensors:
            found = _BLOCK.match(tensor.name)
            if found and int(found.group(1)) < len(blocks):
                blocks[int(found.group(1))] += tensor.nbytes
            elif tensor.name.startswith("token_embd"):
                inputs += tensor.nbytes
            else:
                output += tensor.nbytes
        return blocks, output, inputs

    def per_layer(self, key: str, default: int) -> list[int]:
        value = self.get(key, default)
        if isinstance(value, list):
            return [int(item) for item in value[: self.n_layer]]
        return [int(value)] * self.n_layer

    def kv_widths(self) -> list[tuple[int, int]]:
        """(K width, V width) of each layer's cache row: key/value length x KV heads."""
        n_embd = int(self.get("embedding_length", 0))
        heads = self.per_layer("attention.head_count", 1)
        kv_heads = self.per_layer("attention.head_count_kv", 0)
        head = n_embd // max(1, max(heads, default=1))
        key_length = int(self.get("attention.key_length", head))
        value_length = int(self.get("attention.value_length", head))
        return [
            (key_length * (kv or h), value_length * (kv or h)) for h, kv in zip(heads, kv_heads, strict=True)
        ]


def _read(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF header")
    return data


def _string(stream: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", _read(stream, 8))
    if length > MAX_STRING:
        raise ValueError("GGUF string too long")
    return _read(stream, length).decode("utf-8", errors="replace")


def _value(stream: BinaryIO, kind: int) -> Any:
    if kind in _SCALARS:
        fmt = _SCALARS[kind]
        return struct.unpack(fmt, _read(stream, struct.calcsize(fmt)))[0]
    if kind == 8:
        return _string(stream)
    if kind == 9:
        item_kind, count = struct.unpack("<IQ", _read(stream, 12))
        if count > MAX_ITEMS:
            raise ValueError("GGUF array too long")
        if count > KEEP_ARRAY:
            if item_kind in _SCALARS:
                stream.seek(count * struct.calcsize(_SCALARS[item_kind]), 1)
            else:
                for _ in range(count):
                    _value(stream, item_kind)
            return count
        return [_value(stream, item_kind) for _ in range(count)]
    raise ValueError(f"unknown GGUF value type {kind}")


def read_header(path: Path) -> GGUFHeader:
    """Metadata and tensor list of a GGUF file (no tensor data is read)."""
    with path.open("rb") as stream:
        if _read(stream, 4) != MAGIC:
            raise ValueError(f"{path.name} is not a GGUF file")
        version, n_tensors, n_kv = struct.unpack("<IQQ", _read(stream, 20))
        if version < 2 or n_tensors > MAX_TENSORS or n_kv > MAX_TENSORS:
            raise ValueError(f"{path.name}: unsupported GGUF header")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = _string(stream)
            (kind,) = struct.unpack("<I", _read(stream, 4))
            metadata[key] = _value(stream, kind)
        tensors = []
        for _ in range(n_tensors):
            name = _string(stream)
            (n_dims,) = struct.unpack("<I", _read(stream, 4))
            if n_dims > 8:
                raise ValueError("GGUF tensor with too many dimensions")
            shape = struct.unpack(f"<{n_dims}Q", _read(stream, 8 * n_dims))
            kind, _offset = struct.unpack("<IQ", _read(stream, 12))
            if kind not in GGML_TYPES:
                raise ValueError(f"unknown ggml type {kind} in {path.name}")
            tensors.append(Tensor(name, tuple(int(dim) for dim in shape), int(kind)))
    return GGUFHeader(metadata, tensors)


@dataclass
class Footprint:
    """Bytes of one llama.cpp model on its GPU (``gpu``) and in RAM (``cpu``)."""

    weights_gpu: int
    weights_cpu: int
    kv_gpu: int
    kv_cpu: int
    compute: int
    gpu_layers: int

    @property
    def gpu(self) -> int:
        return self.weights_gpu + self.kv_gpu + (self.compute if self.gpu_layers else 0)

    @property
    def cpu(self) -> int:
        return self.weights_cpu + self.kv_cpu + (0 if self.gpu_layers else self.compute)

    @property
    def total(self) -> int:
        return self.gpu + self.cpu


def context_cells(settings: dict[str, Any]) -> tuple[int, int]:
    """(cells of one sequence, sequences): llama.cpp pads each sequence's n_ctx to 256."""
    n_ctx = max(1, int(settings.get("n_ctx") or 4096))
    per_sequence = -(-n_ctx // CTX_PAD) * CTX_PAD
    return per_sequence, max(1, int(settings.get("parallel") or 1))


def kv_bytes(header: GGUFHeader, cells: int, type_k: str = "f16", type_v: str = "f16") -> list[int]:
    """KV cache bytes of each layer for ``cells`` cells (all sequences together)."""
    k_block, k_size = GGML_TYPES[CACHE_TYPES[type_k]]
    v_block, v_size = GGML_TYPES[CACHE_TYPES[type_v]]
    return [
        cells * (k_width // k_block * k_size + v_width // v_block * v_size)
        for k_width, v_width in header.kv_widths()
    ]


def compute_bytes(header: GGUFHeader, settings: dict[str, Any]) -> int:
    """An upper bound of llama.cpp's compute buffer, in f32: one micro-batch's attention scores
    over a sequence's context for every head plus the mask (with flash attention: the mask
    only), its widest activations and a row of logits per token (measured on the CPU backend:
    40.8 MiB for the tiny model at n_ctx 4096, where this gives 42)."""
    per_sequence, _ = context_cells(settings)
    ubatch = min(512, max(1, int(settings.get("n_batch") or 512)))
    vocab = header.metadata.get("tokenizer.ggml.tokens")
    n_vocab = vocab if isinstance(vocab, int) else len(vocab or []) or 32000
    n_embd = int(header.get("embedding_length", 0))
    n_ff = header.get("feed_forward_length", 0)
    n_ff = max(n_ff) if isinstance(n_ff, list) else int(n_ff)
    heads = max(header.per_layer("attention.head_count", 1), default=1)
    flash = str(settings.get("flash_attention", "off")) != "off"
    scores = per_sequence * (1 if flash else heads + 1)
    return 4 * ubatch * (scores + 4 * max(n_embd, n_ff) + n_vocab)


def offloaded_layers(n_gpu_layers: Any, n_layer: int) -> int:
    """Layers llama.cpp puts on the GPU for an ``n_gpu_layers`` setting (-1 or past the
    repeating layers: all of them and the output layer, ``n_layer + 1``)."""
    try:
        wanted = int(n_gpu_layers)
    except (TypeError, ValueError):  # "auto" and the like: all
        wanted = -1
    return n_layer + 1 if wanted < 0 else min(wanted, n_layer + 1)


def estimate_footprint(header: GGUFHeader, settings: dict[str, Any], gpu: bool) -> Footprint:
    """Where the bytes of a load with ``settings`` go. Without a GPU backend everything is RAM."""
    n_layer = header.n_layer
    gpu_layers = offloaded_layers(settings.get("n_gpu_layers", 0), n_layer) if gpu else 0
    blocks, output, inputs = header.layer_bytes()
    per_sequence, parallel = context_cells(settings)
    kv = kv_bytes(
        header, per_sequence * parallel, settings.get("type_k") or "f16", settings.get("type_v") or "f16"
    )
    first_gpu = n_layer + 1 - gpu_layers  # llama.cpp offloads the last layers
    on_gpu = [index >= first_gpu for index in range(n_layer)]
    output_on_gpu = gpu_layers > n_layer
    weights_gpu = sum(b for b, g in zip(blocks, on_gpu, strict=True) if g) + (output if output_on_gpu else 0)
    kv_gpu = sum(k for k, g in zip(kv, on_gpu, strict=True) if g)
    return Footprint(
        weights_gpu=weights_gpu,
        weights_cpu=sum(blocks) + output + inputs - weights_gpu,
        kv_gpu=kv_gpu,
        kv_cpu=sum(kv) - kv_gpu,
        compute=compute_bytes(header, settings),
        gpu_layers=gpu_layers,
    )


def layers_that_fit(model_path: Path, settings: dict[str, Any], free_bytes: int) -> int:
    """The largest ``n_gpu_layers`` whose GPU share (weights of those layers, their KV cache at
    ``parallel x n_ctx``, the compute buffer) fits ``free_bytes``; 0 when not even one layer
    does. ``parallel`` and ``n_ctx`` are never shrunk to make it fit."""
    header = read_header(model_path)
    for layers in range(header.n_layer + 1, 0, -1):
        if estimate_footprint(header, {**settings, "n_gpu_layers": layers}, gpu=True).gpu <= free_bytes:
            return layers
    return 0
