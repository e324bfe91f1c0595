"""PullManager against the local fake hub: GGUF by file and by tag, snapshots, resume, checksums,
allowed sources, shared downloads, cancel, delete."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lollms_server.core.bindings import BindingManager
from lollms_server.core.config import AppConfig, config_from_dict
from lollms_server.core.errors import (
    BadRequestError,
    ConflictError,
    LollmsError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from lollms_server.core.models import PullManager, installed_models
from lollms_server.core.models.transfer import DownloadError, PullCancelled
from tests.conftest import base_config
from tests.fixtures.fake_hub import FakeHub

REPO = "tester/tiny-GGUF"


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from tests.tiny_models import build_tiny_gguf

    return build_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf").read_bytes()


@pytest.fixture(autouse=True)
def hub_online(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def hub(gguf_bytes: bytes) -> Iterator[FakeHub]:
    with FakeHub.running() as running:
        running.state.add(
            REPO,
            {
                "tiny-Q4_K_M.gguf": gguf_bytes,
                "tiny-Q8_0.gguf": gguf_bytes[::-1],
                "README.md": b"# tiny\n",
            },
        )
        yield running


def make_config(tmp_path: Path, hub: FakeHub, **models: Any) -> AppConfig:
    data = base_config(
        tmp_path,
        tmp_path / "models",
        models={"hub_endpoint": hub.url, **models},
        bindings={
            "echo": {"type": "scripted_binding"},
            "llm": {"type": "llamacpp_binding", "n_threads": 1},
            "llm2": {"type": "llamacpp_binding", "n_threads": 1},
            "text": {"type": "transformers_binding", "device": "cpu"},
        },
    )
    return config_from_dict(data, base=tmp_path, environ={})


def manager(config: AppConfig, loaded: set[tuple[str, str]] | None = None) -> PullManager:
    async def residency() -> set[tuple[str, str]]:
        return loaded or set()

    return PullManager(config, BindingManager(config), residency)


async def test_a_gguf_by_file_lands_in_the_models_folder_and_is_listed(
    tmp_path: Path, hub: FakeHub, gguf_bytes: bytes
) -> None:
    pulls = manager(make_config(tmp_path, hub))
    try:
        pull = await pulls.start("llm", f"{REPO}/tiny-Q4_K_M.gguf")
        events = [event async for event in pull.events()]
    finally:
        await pulls.close()
    target = tmp_path / "models" / "llamacpp_binding" / REPO / "tiny-Q4_K_M.gguf"
    assert target.read_bytes() == gguf_bytes
    assert not list(target.parent.glob("*.part"))
    assert pull.status == "succeeded" and pull.result == [f"{REPO}/tiny-Q4_K_M.gguf"]
    assert events[-1] == {"file": "tiny-Q4_K_M.gguf", "completed": len(gguf_bytes), "total": len(gguf_bytes)}
    assert all(event["total"] == len(gguf_bytes) for event in events)
    assert [e["completed"] for e in events] == sorted(e["completed"] for e in events)  # never backwards
    instance = pulls.bindings.instance("llm")
    assert installed_models(instance) == [{"name": f"{REPO}/tiny-Q4_K_M.gguf", "size": len(gguf_bytes)}]
    assert pulls.list()[0]["status"] == "succeeded"
    # a late listener gets the current state, then the end
    assert [event async for event in pull.events()][-1]["completed"] == len(gguf_bytes)


async def test_a_quantisation_tag_and_the_default_tag(
    tmp_path: Path, hub: FakeHub, gguf_bytes: bytes
) -> None:
    pulls = manager(make_config(tmp_path, hub))
    try:
        assert await (await pulls.start("llm", f"{REPO}:q8_0")).wait() == [f"{REPO}/tiny-Q8_0.gguf"]
        assert await (await pulls.start("llm", REPO)).wait() == [f"{REPO}/tiny-Q4_K_M.gguf"]
        with pytest.raises(NotFoundError, match="no GGUF of quantisation 'IQ1_S'.*tiny-Q4_K_M.gguf"):
            await pulls.start("llm", f"{REPO}:IQ1_S")
        with pytest.raises(NotFoundError, match="No model repository 'tester/missing'"):
            await pulls.start("llm", "tester/missing:Q4_K_M")
    finally:
        await pulls.close()
    folder = tmp_path / "models" / "llamacpp_binding" / REPO
    assert (folder / "tiny-Q8_0.gguf").read_bytes() == gguf_bytes[::-1]
    assert not (folder / "README.md").exists()


async def test_a_snapshot_takes_the_files_a_binding_needs(tmp_path: Path, hub: FakeHub) -> None:
    pytest.importorskip("transformers")
    from tests.tiny_media_models import build_tiny_llama_hf

    source = build_tiny_llama_hf(tmp_path / "built")
    files = {
        path.relative_to(source).as_posix(): path.read_bytes() for path in source.rglob("*") if path.is_file()
    }
    extras = {
        "flax_model.msgpack": b"flax" * 100,
        "pytorch_model.bin": b"torch" * 100,
        "onnx/model.onnx": b"x",
    }
    hub.state.add("tester/tiny-llama", {**files, **extras})
    pulls = manager(make_config(tmp_path, hub))
    try:
        assert await (await pulls.start("text", "tester/tiny-llama")).wait() == ["tester/tiny-llama"]
        with pytest.raises(BadRequestError, match="loads whole model folders"):
            await pulls.start("text", "tester/tiny-llama:Q4_K_M")
    finally:
        await pulls.close()
    folder = tmp_path / "models" / "transformers_binding" / "tester" / "tiny-llama"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == sorted(files)
    from transformers import AutoConfig, AutoTokenizer

    assert AutoConfig.from_pretrained(folder).hidden_size == 64
    assert AutoTokenizer.from_pretrained(folder)("hello")["input_ids"]
    assert [m["name"] for m in installed_models(pulls.bindings.instance("text"))] == ["tester/tiny-llama"]


async def test_a_dropped_connection_resumes_where_it_stopped(
    tmp_path: Path, hub: FakeHub, gguf_bytes: bytes
) -> None:
    half = len(gguf_bytes) // 2
    hub.state.cut_once[f"{REPO}/tiny-Q4_K_M.gguf"] = half
    pulls = manager(make_config(tmp_path, hub))
    try:
        await (await pulls.start("llm", f"{REPO}:Q4_K_M")).wait()
    finally:
        await pulls.close()
    ranges = hub.state.downloads("tiny-Q4_K_M.gguf")
    assert ranges[0] == "" and len(ranges) == 2
    resumed_at = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= half  # only what was missing came again
    target = tmp_path / "models" / "llamacpp_binding" / REPO / "tiny-Q4_K_M.gguf"
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(gguf_bytes).digest()


async def test_an_interrupted_pull_resumes_on_the_next_one(
    tmp_path: Path, hub: FakeHub, gguf_bytes: bytes
) -> None:
    folder = tmp_path / "models" / "llamacpp_binding" / REPO
    folder.mkdir(parents=True)
    (folder / "tiny-Q4_K_M.gguf.part").write_bytes(gguf_bytes[:1000])
    pulls = manager(make_config(tmp_path, hub))
    try:
        await (await pulls.start("llm", f"{REPO}:Q4_K_M")).wait()
    finally:
        await pulls.close()
    assert hub.state.downloads("tiny-Q4_K_M.gguf") == ["bytes=1000-"]
    assert (folder / "tiny-Q4_K_M.gguf").read_bytes() == gguf_bytes


async def test_a_checksum_mismatch_is_refused_and_nothing_is_kept(tmp_path: Path, hub: FakeHub) -> None:
    hub.state.corrupt.add(f"{REPO}/tiny-Q4_K_M.gguf")
    pulls = manager(make_config(tmp_path, hub))
    try:
        pull = await pulls.start("llm", f"{REPO}:Q4_K_M")
        with pytest.raises(DownloadError, match="checksum mismatch"):
            await pull.wait()
    finally:
        await pulls.close()
    assert pull.status == "failed" and pull.describe()["error"]["type"] == "download_error"
    folder = tmp_path / "models" / "llamacpp_binding" / REPO
    assert list(folder.iterdir()) == []  # neither the file nor its .part


async def test_sources_size_and_bindings_are_checked_before_any_byte(tmp_path: Path, hub: FakeHub) -> None:
    pulls = manager(make_config(tmp_path, hub, allowed_sources=["someone-else", "tester/other"]))
    try:
        with pytest.raises(PermissionDeniedError, match="allowed_sources"):
            await pulls.start("llm", f"{REPO}:Q4_K_M")
        assert hub.state.requests == []  # refused before the hub was asked
        with pytest.raises(BadRequestError, match="keeps no model files"):
            await pulls.start("echo", f"{REPO}:Q4_K_M")
        with pytest.raises(NotFoundError):
            await pulls.start("nope", f"{REPO}:Q4_K_M")
    finally:
        await pulls.close()
    pulls = manager(make_config(tmp_path, hub))
    try:
        with pytest.raises(PermissionDeniedError):  # empty list: none for a first use by a generate key
            await pulls.start("llm", f"{REPO}:Q4_K_M", trusted=False)
    finally:
        await pulls.close()
    pulls = manager(make_config(tmp_path, hub, max_download_gb=1e-6))
    try:
        with pytest.raises(PayloadTooLargeError, match="max_download_gb"):
            await pulls.start("llm", f"{REPO}:Q4_K_M")
    finally:
        await pulls.close()


async def test_the_downloads_section_is_the_fallback(tmp_path: Path, hub: FakeHub) -> None:
    config = make_config(tmp_path, hub)
    config.downloads.allowed_sources = ["nobody"]
    pulls = manager(config)
    try:
        with pytest.raises(PermissionDeniedError):
            await pulls.start("llm", f"{REPO}:Q4_K_M")
    finally:
        await pulls.close()


async def test_concurrent_pulls_of_one_file_download_it_once(
    tmp_path: Path, hub: FakeHub, gguf_bytes: bytes
) -> None:
    hub.state.delay = 0.01
    pulls = manager(make_config(tmp_path, hub))
    try:
        first, at_once = await asyncio.gather(  # both ask the hub before either has started
            pulls.start("llm", f"{REPO}:Q4_K_M"), pulls.start("llm", f"{REPO}/tiny-Q4_K_M.gguf")
        )
        assert at_once is first
        same_ref = await pulls.start("llm", f"{REPO}:Q4_K_M")
        by_file = await pulls.start("llm", f"{REPO}/tiny-Q4_K_M.gguf")  # the same file, named otherwise
        other_instance = await pulls.start("llm2", f"{REPO}:Q4_K_M")  # same models folder
        assert same_ref is first and by_file is first and other_instance is first
        results = await asyncio.gather(first.wait(), same_ref.wait(), by_file.wait())
    finally:
        await pulls.close()
    assert results == [[f"{REPO}/tiny-Q4_K_M.gguf"]] * 3
    assert len(hub.state.downloads("tiny-Q4_K_M.gguf")) == 1


async def test_cancel_stops_the_download_and_keeps_the_part_to_resume(
    tmp_path: Path, hub: FakeHub, gguf_bytes: bytes
) -> None:
    hub.state.delay = 0.05
    pulls = manager(make_config(tmp_path, hub))
    try:
        pull = await pulls.start("llm", f"{REPO}:Q4_K_M")
        async for progress in pull.events():
            if progress["completed"] > 0:
                break
        pull.cancel()
        with pytest.raises(PullCancelled):
            await pull.wait()
        assert pull.status == "cancelled"
        await asyncio.sleep(0.3)  # the transfer thread stops at its next chunk
        part = tmp_path / "models" / "llamacpp_binding" / REPO / "tiny-Q4_K_M.gguf.part"
        kept = part.stat().st_size
        assert 0 < kept < len(gguf_bytes)
        hub.state.delay = 0.0
        await (await pulls.start("llm", f"{REPO}:Q4_K_M")).wait()
    finally:
        await pulls.close()
    assert hub.state.downloads("tiny-Q4_K_M.gguf")[-1] == f"bytes={kept}-"
    assert (part.parent / "tiny-Q4_K_M.gguf").read_bytes() == gguf_bytes


async def test_delete_refuses_a_loaded_model_then_removes_it(tmp_path: Path, hub: FakeHub) -> None:
    name = f"{REPO}/tiny-Q4_K_M.gguf"
    config = make_config(tmp_path, hub)
    loaded = {("llm2", name)}  # loaded by another instance over the same folder
    pulls = manager(config, loaded)
    try:
        await (await pulls.start("llm", name)).wait()
        with pytest.raises(ConflictError, match="is loaded"):
            await pulls.delete_model("llm", name)
        loaded.clear()
        await pulls.delete_model("llm", name)
        with pytest.raises(NotFoundError):
            await pulls.delete_model("llm", name)
        with pytest.raises(BadRequestError):
            await pulls.delete_model("llm", "../../outside.gguf")
        with pytest.raises(NotFoundError):  # "." is the models folder itself: never deleted
            await pulls.delete_model("llm", ".")
        with pytest.raises(LollmsError):
            await pulls.delete_model("nope", name)
    finally:
        await pulls.close()
    assert not (tmp_path / "models" / "llamacpp_binding" / "tester").exists()  # empty folders go too


async def test_not_enough_disk_space_is_refused_before_any_byte(
    tmp_path: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    pulls = manager(make_config(tmp_path, hub))
    try:
        with pytest.raises(PayloadTooLargeError, match="Not enough disk space"):
            await pulls.start("llm", f"{REPO}:Q4_K_M")
    finally:
        await pulls.close()
    assert hub.state.downloads("tiny-Q4_K_M.gguf") == []


async def test_a_half_pulled_snapshot_is_not_listed(tmp_path: Path, hub: FakeHub) -> None:
    hub.state.add("tester/snap", {"config.json": b"{}", "model.safetensors": b"w" * 200_000})
    hub.state.delay = 0.05
    pulls = manager(make_config(tmp_path, hub))
    instance = pulls.bindings.instance("text")
    try:
        pull = await pulls.start("text", "tester/snap")
        async for progress in pull.events():
            if progress["file"] == "model.safetensors" and 0 < progress["completed"] < progress["total"]:
                assert installed_models(instance) == []  # config.json waits for the weights
                break
        await pull.wait()
    finally:
        await pulls.close()
    assert installed_models(instance) == [{"name": "tester/snap", "size": 200_002}]


async def test_first_use_pulls_only_missing_hub_names_of_downloading_bindings(
    tmp_path: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    config = make_config(tmp_path, hub)
    pulls = manager(config)
    pulls.bindings.instances["llm"].settings["allow_download"] = True
    name = f"{REPO}/tiny-Q4_K_M.gguf"
    try:
        assert await pulls.for_first_use("llm2", name, trusted=True) is None  # no allow_download
        assert await pulls.for_first_use("llm", "local.gguf", trusted=True) is None  # not a hub name
        assert await pulls.for_first_use("llm", "../x/y.gguf", trusted=True) is None  # the binding's 400
        with pytest.raises(PermissionDeniedError):  # a generate key, no allowed_sources
            await pulls.for_first_use("llm", name, trusted=False)
        pull = await pulls.for_first_use("llm", name, trusted=True)
        assert pull is not None and await pull.wait() == [name]
        assert await pulls.for_first_use("llm", name, trusted=True) is None  # installed now
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        assert await pulls.for_first_use("llm", f"{REPO}/tiny-Q8_0.gguf", trusted=True) is None
        with pytest.raises(LollmsError, match="HF_HUB_OFFLINE") as refused:
            await pulls.start("llm", f"{REPO}:Q8_0")
        assert refused.value.status_code == 503
    finally:
        await pulls.close()


async def test_a_hub_that_ignores_the_range_restarts_the_file(
    tmp_path: Path, hub: FakeHub, gguf_bytes: bytes
) -> None:
    folder = tmp_path / "models" / "llamacpp_binding" / REPO
    folder.mkdir(parents=True)
    (folder / "tiny-Q4_K_M.gguf.part").write_bytes(b"stale bytes of another version" * 10)
    hub.state.ignore_range.add(f"{REPO}/tiny-Q4_K_M.gguf")
    pulls = manager(make_config(tmp_path, hub))
    try:
        await (await pulls.start("llm", f"{REPO}:Q4_K_M")).wait()
    finally:
        await pulls.close()
    assert hub.state.downloads("tiny-Q4_K_M.gguf") == ["bytes=300-"]  # asked to resume, got it all
    assert (folder / "tiny-Q4_K_M.gguf").read_bytes() == gguf_bytes


async def test_downloads_never_take_the_default_executor(tmp_path: Path, hub: FakeHub) -> None:
    """T3-05: six slow downloads leave the loop's default executor (image decoding and stamping,
    binding starts, job files) free; here it has 2 threads, so one transfer in it would starve it."""
    from concurrent.futures import ThreadPoolExecutor

    loop = asyncio.get_running_loop()
    small = ThreadPoolExecutor(2, thread_name_prefix="default")
    loop.set_default_executor(small)
    hub.state.add("acme/slow-GGUF", {f"slow-{i}.gguf": bytes([i]) * 2**20 for i in range(6)})
    hub.state.delay = 0.2  # 64 chunks: about 13 s per file
    pulls = manager(make_config(tmp_path, hub, allowed_sources=["acme"]))
    try:
        started = [await pulls.start("llm", f"acme/slow-GGUF/slow-{i}.gguf") for i in range(6)]
        deadline = loop.time() + 10
        while sum(pull.describe()["completed"] > 0 for pull in started) < 2 and loop.time() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        begin = loop.time()
        short_work = await asyncio.wait_for(asyncio.to_thread(lambda: "done"), 20)
        waited = loop.time() - begin
        assert short_work == "done" and waited < 1.0, f"the default executor was busy for {waited:.1f} s"
        assert all(pull.status == "running" for pull in started)
        await asyncio.sleep(1.0)
        assert all(pull.describe()["completed"] > 0 for pull in started)  # all six transfer at once
    finally:
        await pulls.close()
        small.shutdown(wait=False)


async def test_first_use_downloads_of_generate_keys_have_a_budget_per_key_and_in_all(
    tmp_path: Path, hub: FakeHub
) -> None:
    """T3-14: a generate key naming one hub file after another cannot fill the disk."""
    hub.state.add("acme/many-GGUF", {f"m-{i}.gguf": bytes([i]) * 2**20 for i in range(6)})
    mib = 1 / 1024  # GB
    config = make_config(
        tmp_path, hub, allowed_sources=["acme"], first_use_gb_per_key=2.5 * mib, first_use_total_gb=4.5 * mib
    )
    pulls = manager(config)
    pulls.bindings.instances["llm"].settings["allow_download"] = True
    try:
        for i in range(2):
            pull = await pulls.for_first_use("llm", f"acme/many-GGUF/m-{i}.gguf", trusted=False, key="alice")
            assert pull is not None and await pull.wait() == [f"acme/many-GGUF/m-{i}.gguf"]
        with pytest.raises(PermissionDeniedError, match="first_use_gb_per_key") as refused:
            await pulls.for_first_use("llm", "acme/many-GGUF/m-2.gguf", trusted=False, key="alice")
        assert refused.value.status_code == 403 and "budget" in refused.value.message
        for i in (2, 3):  # another key has its own budget...
            pull = await pulls.for_first_use("llm", f"acme/many-GGUF/m-{i}.gguf", trusted=False, key="bob")
            assert pull is not None and await pull.wait()
        with pytest.raises(PermissionDeniedError, match="first_use_total_gb"):  # ... within the total
            await pulls.for_first_use("llm", "acme/many-GGUF/m-4.gguf", trusted=False, key="carol")
        admin = await pulls.for_first_use("llm", "acme/many-GGUF/m-4.gguf", trusted=True, key="admin")
        assert admin is not None and await admin.wait()  # an admin's first use is not counted
        assert await pulls.for_first_use("llm", "acme/many-GGUF/m-0.gguf", trusted=False, key="alice") is None
    finally:
        await pulls.close()
    pulled = sorted(
        p.name for p in (tmp_path / "models" / "llamacpp_binding" / "acme" / "many-GGUF").glob("*.gguf")
    )
    assert pulled == [f"m-{i}.gguf" for i in range(5)]


async def test_a_cancelled_first_use_pull_gives_back_the_budget_it_did_not_download(
    tmp_path: Path, hub: FakeHub
) -> None:
    """Only what a failed or cancelled first-use pull left on disk stays counted (its ``.part``,
    which the next pull resumes from); the rest goes back to the key's budget and the total."""
    hub.state.add("acme/big-GGUF", {"big.gguf": b"b" * 2**21, "other.gguf": b"o" * 2**21})
    hub.state.delay = 0.2  # 64 chunks: about 13 s for the file
    mib = 1 / 1024  # GB
    config = make_config(
        tmp_path, hub, allowed_sources=["acme"], first_use_gb_per_key=3 * mib, first_use_total_gb=3 * mib
    )
    pulls = manager(config)
    pulls.bindings.instances["llm"].settings["allow_download"] = True
    try:
        pull = await pulls.for_first_use("llm", "acme/big-GGUF/big.gguf", trusted=False, key="alice")
        assert pull is not None
        deadline = asyncio.get_running_loop().time() + 10
        while pull.describe()["completed"] == 0 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        pull.cancel()
        with pytest.raises(LollmsError):
            await pull.wait()
        kept = pull.describe()["completed"]
        assert 0 < kept < 2**21
        hub.state.delay = 0.0
        # 2 MiB more fits the 3 MiB budget only if the cancelled pull's undownloaded bytes came back
        other = await pulls.for_first_use("llm", "acme/big-GGUF/other.gguf", trusted=False, key="alice")
        assert other is not None and await other.wait() == ["acme/big-GGUF/other.gguf"]
    finally:
        await pulls.close()
