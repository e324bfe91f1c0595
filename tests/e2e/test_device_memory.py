"""End to end: one device shared by a text pool and an image pool. The CPU device is capped
(``[devices.cpu] max_memory_mb``) between the larger of two tiny models and their sum, so each
request of the other pool evicts the idle model of the first: text, image, text, never a 500,
with the ledger in the status, the metrics and /api/ps; a model larger than the device is 422."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lollms_server.core.bindings import BindingManager, MediaRequest
from lollms_server.core.config import config_from_dict
from tests.conftest import ADMIN_KEY, AUTH, ServerProcess, media_instance, running_server

pytestmark = pytest.mark.e2e

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
TEXT = {"n_ctx": 512, "parallel": 1, "n_threads": 1}
SIZE = {"width": 64, "height": 64}


def estimates(models_folder: Path, media_folder: Path) -> tuple[float, float, float]:
    """What the server will reserve for the tiny text and image models (their estimates) and
    for the working memory of one 64 x 64 image."""
    config = config_from_dict(
        {
            "server": {"auto_install_requirements": False},
            "paths": {"models_folder": str(models_folder)},
            "bindings": {
                "llm": {"type": "llamacpp_binding", **TEXT},
                "images": media_instance("diffusers_binding", media_folder),
            },
        },
        environ={},
    )

    async def all_three() -> tuple[float, float, float]:
        manager = BindingManager(config)
        text = await (await manager.get("llm")).estimate_footprint_mb("tiny.gguf")
        images = await manager.get("images")
        image = await images.estimate_footprint_mb("tiny-sd")
        job = await images.request_memory_mb("tiny-sd", MediaRequest("tti", parameters=SIZE))
        assert text and image and job
        return text, image, job

    return asyncio.run(all_three())


@pytest.fixture(scope="module")
def sizes_and_server(
    tmp_path_factory: pytest.TempPathFactory, models_folder: Path
) -> Iterator[tuple[float, float, float, ServerProcess, Path]]:
    pytest.importorskip("diffusers")
    from tests.tiny_media_models import build_tiny_stable_diffusion

    media = tmp_path_factory.mktemp("device-media")
    build_tiny_stable_diffusion(media / "diffusers_binding" / "tiny-sd")
    text_mb, image_mb, job_mb = estimates(models_folder, media)
    # room for the text model alone or the image model and one image's working memory, never
    # for both models
    cap = (max(text_mb, image_mb + job_mb) + text_mb + image_mb) / 2
    assert max(text_mb, image_mb + job_mb) < cap < text_mb + image_mb
    folder = tmp_path_factory.mktemp("device-server")
    with running_server(
        folder,
        models_folder,
        paths={"runtime_folder": str(folder / "run")},
        devices={"cpu": {"reserve_mb": 0, "max_memory_mb": cap}},
        resource_manager={
            "pools": {
                "default": {"limit": 1, "queue_timeout": 30},
                "text": {"limit": 1, "queue_timeout": 30},
                "media": {"limit": 1, "queue_timeout": 30},
            }
        },
        bindings={
            "echo": {"type": "scripted_binding"},
            "llm": {"type": "llamacpp_binding", **TEXT, "pool": "text"},
            "images": {
                **media_instance("diffusers_binding", media),
                "pool": "media",
                "default_steps": 2,
                "default_width": 64,
                "default_height": 64,
            },
        },
    ) as server:
        yield text_mb, image_mb, cap, server, folder


def generate(server: ServerProcess, generation_type: str, **extra: Any) -> httpx.Response:
    body = {
        "generation_type": generation_type,
        "input_data": [{"type": "text", "role": "user_prompt", "data": "a red square"}],
        **extra,
    }
    return httpx.post(server.url + "/api/v1/generate", json=body, headers=AUTH, timeout=300)


def ledger(server: ServerProcess) -> dict[str, Any]:
    status = httpx.get(server.url + "/api/v1/status", headers=ADMIN, timeout=30).json()
    device: dict[str, Any] = status["devices"]["cpu"]
    return device


def test_text_image_text_evict_each_other_across_pools(
    sizes_and_server: tuple[float, float, float, ServerProcess, Path],
) -> None:
    text_mb, image_mb, cap, server, folder = sizes_and_server
    assert max(text_mb, image_mb) < cap < text_mb + image_mb
    text = {"binding_name": "llm", "model_name": "tiny.gguf", "parameters": {"max_tokens": 4}}
    image = {"binding_name": "images", "model_name": "tiny-sd", "parameters": {"seed": 1, **SIZE}}
    seen = []
    for kind, extra in (("ttt", text), ("tti", image), ("ttt", text)):
        response = generate(server, kind, **extra)
        assert response.status_code == 200, response.text
        device = ledger(server)
        seen.append([(model["instance"], model["model"], model["state"]) for model in device["models"]])
        assert device["limit_mb"] == pytest.approx(cap, abs=0.1)
        assert device["reserved_mb"] <= cap
    assert seen == [
        [("llm", "tiny.gguf", "resident")],
        [("images", "tiny-sd", "resident")],
        [("llm", "tiny.gguf", "resident")],
    ]
    device = ledger(server)
    assert device["evictions"]["lru"] == 2 and device["rejections"] == {"memory": 0, "too_large": 0}
    (entry,) = device["models"]
    assert entry["pool"] == "text" and entry["estimate_mb"] == pytest.approx(text_mb, rel=1e-3)
    assert entry["measured_mb"] == pytest.approx(text_mb, rel=1e-3)  # the estimate is exact on the CPU
    # the measurements are remembered in the runtime folder for the next start
    assert (folder / "run" / "footprints.json").is_file()
    metrics = httpx.get(server.url + "/metrics", headers=ADMIN, timeout=30).text
    assert 'lollms_device_evictions_total{device="cpu",reason="lru"} 2.0' in metrics
    assert 'lollms_device_memory_reserved_bytes{device="cpu"}' in metrics
    assert 'lollms_footprint_estimate_ratio{binding="llm",device="cpu",model="tiny.gguf"} 1.0' in metrics
    ps = httpx.get(server.url + "/api/ps", headers=AUTH, timeout=30).json()["models"]
    assert [(model["model"], model["size_vram"]) for model in ps] == [("llm/tiny.gguf:latest", 0)]


def test_a_model_larger_than_the_device_is_422(
    sizes_and_server: tuple[float, float, float, ServerProcess, Path],
) -> None:
    _, _, cap, server, _ = sizes_and_server
    response = generate(server, "ttt", binding_name="llm", model_name="slow.gguf")
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "model_too_large" and f"{cap:.0f} MB" in error["message"]
    assert ledger(server)["rejections"]["too_large"] == 1
    # and the server keeps serving
    assert generate(server, "ttt", binding_name="llm", model_name="tiny.gguf").status_code == 200
