"""Model references, allowed sources, and which hub files a pull takes."""

from __future__ import annotations

import pytest

from lollms_server.core.errors import BadRequestError, NotFoundError
from lollms_server.core.models.hub import gguf_groups, pick_gguf, snapshot_files
from lollms_server.core.models.refs import ModelRef, parse_ref, source_allowed


def test_the_three_forms_and_a_revision() -> None:
    assert parse_ref("owner/repo/sub/model-Q4_K_M.gguf") == ModelRef(
        "owner/repo", filename="sub/model-Q4_K_M.gguf"
    )
    assert parse_ref("owner/repo:Q8_0") == ModelRef("owner/repo", quant="Q8_0")
    assert parse_ref("owner/repo") == ModelRef("owner/repo")
    assert parse_ref("hf.co/owner/repo@v1:Q8_0") == ModelRef("owner/repo", quant="Q8_0", revision="v1")
    assert str(parse_ref("owner/repo@v1:Q8_0")) == "owner/repo@v1:Q8_0"
    assert parse_ref("owner/repo").kind == "repo" and parse_ref("a/b:Q4_0").kind == "quant"


@pytest.mark.parametrize(
    "ref", ["", "justone", "owner/../x", "../repo/file.gguf", "owner/repo/../../etc/passwd", "o/r:bad tag",
            "owner/repo//file.gguf", "own\x00er/repo", "owner/re po"],
)  # fmt: skip
def test_bad_refs_are_400_naming_the_forms(ref: str) -> None:
    with pytest.raises(BadRequestError, match="owner/repo:QUANT"):
        parse_ref(ref)


def test_allowed_sources_owner_repo_and_patterns() -> None:
    assert source_allowed("TheOwner/Repo", ["theowner"], trusted=False)
    assert source_allowed("owner/repo", ["owner/repo"], trusted=False)
    assert not source_allowed("owner/other", ["owner/repo"], trusted=False)
    assert source_allowed("owner/repo-GGUF", ["owner/*-gguf"], trusted=False)
    assert not source_allowed("evil/repo", ["owner"], trusted=True)  # a list binds admins too
    assert source_allowed("any/repo", [], trusted=True)  # empty: any, for an admin
    assert not source_allowed("any/repo", [], trusted=False)  # ... none otherwise


def test_quantisation_tags_split_files_and_the_default() -> None:
    files = [
        "model-Q4_K_M.gguf",
        "model-q8_0.gguf",
        "big/model-Q6_K-00001-of-00002.gguf",
        "big/model-Q6_K-00002-of-00002.gguf",
        "mmproj-model-f16.gguf",
        "README.md",
    ]
    assert list(gguf_groups(files)) == [
        "big/model-Q6_K-00001-of-00002.gguf",
        "model-Q4_K_M.gguf",
        "model-q8_0.gguf",
    ]
    assert pick_gguf(ModelRef("o/r", quant="Q8_0"), files) == ["model-q8_0.gguf"]  # case-insensitive
    assert pick_gguf(ModelRef("o/r"), files) == ["model-Q4_K_M.gguf"]  # llama.cpp's default
    assert pick_gguf(ModelRef("o/r", quant="Q6_K"), files) == [
        "big/model-Q6_K-00001-of-00002.gguf",
        "big/model-Q6_K-00002-of-00002.gguf",
    ]
    with pytest.raises(NotFoundError, match="it has: model-Q6_K-00001-of-00002.gguf, model-Q4_K_M.gguf"):
        pick_gguf(ModelRef("o/r", quant="IQ2_XS"), files)
    with pytest.raises(NotFoundError, match="no GGUF file 'nope.gguf'"):
        pick_gguf(ModelRef("o/r", filename="nope.gguf"), files)
    assert pick_gguf(ModelRef("o/r"), ["only-F16.gguf"]) == ["only-F16.gguf"]  # the only one


def test_a_snapshot_takes_only_what_a_pytorch_binding_loads() -> None:
    files = [
        ".gitattributes",
        "README.md",
        "config.json",
        "model.safetensors",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
        "flax_model.msgpack",
        "tf_model.h5",
        "onnx/model.onnx",
        "model-Q4_K_M.gguf",
        "tokenizer.json",
        "model_index.json",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/config.json",
        "vae/diffusion_pytorch_model.bin",  # no safetensors beside it: kept
    ]
    assert snapshot_files(files) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "model_index.json",
        "tokenizer.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.bin",
    ]


@pytest.mark.parametrize(
    "path", ["../x.gguf", "/abs.gguf", "a//b.gguf", "a/./b.gguf", "a\\b.gguf", "x\n.gguf", ""]
)
def test_hub_file_names_that_would_leave_the_folder_are_dropped(path: str) -> None:
    from lollms_server.core.models.hub import safe_repo_path

    assert not safe_repo_path(path)
    assert safe_repo_path("sub/dir/model-Q4_K_M.gguf")
