"""Tiny real media models with random weights, saved the way users' models are stored.

Each builder writes a folder that the bindings load with ``from_pretrained(folder)``, exactly as
they load a downloaded model. Seeded, offline, seconds in total (see ../shared/NOTES-tiny-models.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BYTE_CHARS = (
    [chr(c) for c in range(ord("!"), ord("~") + 1)]
    + [chr(c) for c in range(0xA1, 0xAD)]
    + [chr(c) for c in range(0xAE, 0x100)]
)


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def _byte_alphabet() -> list[str]:
    """The 256 characters byte-level BPE uses for the 256 byte values."""
    chars = list(BYTE_CHARS)
    extra = 0
    while len(chars) < 256:
        chars.append(chr(256 + extra))
        extra += 1
    return chars


def build_tiny_stable_diffusion(folder: Path, seed: int = 0) -> Path:
    """A Stable Diffusion pipeline folder (CLIP text encoder, UNet, VAE, DDIM) of about 6 MB."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    _seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_alphabet()
    vocab: dict[str, int] = {}
    for char in alphabet:
        vocab[char] = len(vocab)
    for char in alphabet:
        vocab[char + "</w>"] = len(vocab)
    merges = ["t h", "th e</w>", "a n", "o n"]
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tok_dir = folder / "_tokenizer_src"
    tok_dir.mkdir(exist_ok=True)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=1,
        )
    )
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        norm_num_groups=32,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def build_tiny_llama_hf(folder: Path, seed: int = 0) -> Path:
    """A transformers Llama causal LM (127k parameters) with a BPE tokenizer and chat template."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from tests.tiny_models import CHAT_TEMPLATE, train_tokenizer

    _seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    raw = train_tokenizer()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    vocab = raw.get_vocab()
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=vocab["<|endoftext|>"],
        eos_token_id=vocab["<|im_end|>"],
        pad_token_id=vocab["<|pad|>"],
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_embedding_model(folder: Path, seed: int = 0) -> Path:
    """A tiny BERT encoder with the same tokenizer, for sentence embeddings (mean pooling)."""
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from tests.tiny_models import train_tokenizer

    _seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    raw = train_tokenizer()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<|pad|>", unk_token="<|endoftext|>")
    config = BertConfig(
        vocab_size=len(raw.get_vocab()),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data))


def _t5_tokenizer(folder: Path) -> Any:
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [
        (f"\u2581{word}", -1.0) for word in ("a", "the", "cat", "dog", "music", "song", "calm", "fast")
    ]
    pieces += [(char, -2.0) for char in "abcdefghijklmnopqrstuvwxyz0123456789.,!?'"]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_tiny_musicgen(folder: Path, seed: int = 0) -> Path:
    """MusicGen (T5 text encoder, EnCodec at 16 kHz, 2-layer decoder) with its processor."""
    from transformers import (
        EncodecConfig,
        EncodecFeatureExtractor,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        MusicgenProcessor,
        T5Config,
    )

    _seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _t5_tokenizer(folder)
    text = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    audio = EncodecConfig(
        sampling_rate=16000,
        hidden_size=16,
        num_filters=4,
        upsampling_ratios=(8, 5, 4, 2),
        codebook_size=64,
        target_bandwidths=[0.6],
    )
    decoder = MusicgenDecoderConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_dim=64,
        num_codebooks=audio.num_quantizers if hasattr(audio, "num_quantizers") else 1,
        pad_token_id=64,
        bos_token_id=64,
    )
    config = MusicgenConfig(
        text_encoder=text.to_dict(), audio_encoder=audio.to_dict(), decoder=decoder.to_dict()
    )
    model = MusicgenForConditionalGeneration(config)
    model.generation_config.decoder_start_token_id = 64
    model.generation_config.pad_token_id = 64
    model.generation_config.max_new_tokens = 64
    model.save_pretrained(folder)
    processor = MusicgenProcessor(
        feature_extractor=EncodecFeatureExtractor(sampling_rate=16000), tokenizer=tokenizer
    )
    processor.save_pretrained(folder)
    return folder


def build_tiny_vits(folder: Path, seed: int = 0) -> Path:
    """A VITS text-to-speech model with a character vocabulary (no phonemizer)."""
    from transformers import VitsConfig, VitsModel, VitsTokenizer

    _seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(" abcdefghijklmnopqrstuvwxyz.,!?'")
    vocab = {char: index for index, char in enumerate(["<pad>", *chars])}
    _write_json(folder / "vocab.json", vocab)
    tokenizer = VitsTokenizer(
        str(folder / "vocab.json"), phonemize=False, add_blank=True, pad_token="<pad>", unk_token="<pad>"
    )
    config = VitsConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        ffn_dim=32,
        flow_size=8,
        spectrogram_bins=33,
        upsample_initial_channel=16,
        upsample_rates=[4, 4],
        upsample_kernel_sizes=[8, 8],
        resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1, 3]],
        prior_encoder_num_flows=1,
        prior_encoder_num_wavenet_layers=1,
        posterior_encoder_num_wavenet_layers=1,
        duration_predictor_num_flows=1,
        duration_predictor_filter_channels=16,
        depth_separable_num_layers=1,
        sampling_rate=16000,
        speaking_rate=4.0,
    )
    VitsModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_whisper(folder: Path, seed: int = 0) -> Path:
    """A Whisper speech-to-text model (d_model 32, one encoder and one decoder layer)."""
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    _seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_alphabet()
    vocab = {char: index for index, char in enumerate(alphabet)}
    for word in ("Ġthe", "Ġa", "Ġcat", "Ġdog", "Ġhello"):
        vocab[word] = len(vocab)
    merges = [
        "Ġ t",
        "Ġt h",
        "Ġth e",
        "Ġ a",
        "Ġ c",
        "Ġc a",
        "Ġca t",
        "Ġ d",
        "Ġd o",
        "Ġdo g",
        "Ġ h",
        "Ġh e",
        "Ġhe l",
        "Ġhel l",
        "Ġhell o",
    ]
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    specials = [
        "<|endoftext|>",
        "<|startoftranscript|>",
        "<|en|>",
        "<|transcribe|>",
        "<|translate|>",
        "<|notimestamps|>",
        "<|startofprev|>",
        "<|nocaptions|>",
    ]
    for token in specials:
        vocab[token] = len(vocab)
    _write_json(folder / "vocab.json", vocab)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = WhisperTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), additional_special_tokens=specials[1:]
    )
    config = WhisperConfig(
        vocab_size=len(vocab),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_mel_bins=80,
        max_source_positions=1500,
        max_target_positions=64,
        decoder_start_token_id=vocab["<|startoftranscript|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
        bos_token_id=vocab["<|endoftext|>"],
        begin_suppress_tokens=None,
        suppress_tokens=None,
    )
    model = WhisperForConditionalGeneration(config)
    generation = model.generation_config
    generation.decoder_start_token_id = vocab["<|startoftranscript|>"]
    generation.is_multilingual = False
    generation.no_timestamps_token_id = vocab["<|notimestamps|>"]
    generation.max_length = 32
    model.save_pretrained(folder)
    WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer
    ).save_pretrained(folder)
    return folder


def build_tiny_wan(folder: Path, seed: int = 0) -> Path:
    """A Wan text-to-video pipeline (UMT5 encoder, Wan VAE, 2-layer transformer), about 300 KB."""
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    _seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tok_dir = folder / "_tokenizer_src"
    tok_dir.mkdir(exist_ok=True)
    tokenizer = _t5_tokenizer(tok_dir)
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    )
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    pipe.save_pretrained(folder)
    return folder
