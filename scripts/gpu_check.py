"""GPU check: the GPU path of lollms_server end to end, offline, in about ten minutes.

On a machine without an NVIDIA GPU it prints ``{"gpu": false, ...}`` and exits 0. With one it
builds the models the tests build (the mid-size random GGUF of ``scripts/bench_text.py`` and the
tiny Stable Diffusion pipeline of ``tests/tiny_media_models.py``), starts real servers on
127.0.0.1 and records, as JSON (``--out``, default ``gpu_check.json``, and on stdout):

* ``device``: name, total and free memory (MiB), compute capability, driver;
* ``llama_cpp``: the build has a GPU backend (``llama_supports_gpu_offload``), the layers the
  binding offloaded with ``n_gpu_layers = "auto"`` (model info, ``/api/ps`` ``size_vram``), the
  device memory the load took, tokens/s for 1 and 4 clients through the server against the raw
  batched decode on the GPU (the same sequences with llama.cpp's low-level API, nothing else);
* ``diffusers``: an image through the server with ``device = "cuda"``, its peak device memory;
* memory returned after unload: for llama.cpp, the device memory the idle unload gave back (at
  least 80 % of the weights; the process keeps its CUDA context), and what the server process
  kept after the diffusers pipeline's unload; for torch, exactly, ``torch_unload``: the diffusers
  binding loaded and unloaded in this process, ``torch.cuda.memory_allocated`` back to its start;
* ``one_card``: a text stream and an image at the same time on the one card, both served (the
  device arbiter's scenario; with ``lollms_server.core.devices`` present its report is added);
* ``first_run``: a server with ``pull_default_on_start`` and ``HF_ENDPOINT`` on the test suite's
  local fake hub pulls the default repo (the mid GGUF under the default file name), and a chat
  that names no model answers 200, on the GPU.

Device memory is read with ``nvidia-smi`` (llama.cpp's allocations are not torch's); on a shared
card other processes' use moves it. Any failed check makes the exit status 1 (its error is in
``failures``). Run from the repository root, in the environment the server runs in:

    python scripts/gpu_check.py [--out gpu_check.json] [--tokens 64] [--threads 4]

On a bare offline GPU box, ``scripts/gpu_prepare.sh`` gathers what this needs and runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEFAULT_REPO = "Qwen/Qwen2.5-0.5B-Instruct-GGUF"
DEFAULT_FILE = "qwen2.5-0.5b-instruct-q4_k_m.gguf"


# ---- the device ---------------------------------------------------------------------------------
def nvidia_smi(*query: str) -> list[list[str]]:
    """Rows of ``nvidia-smi --query-...=... --format=csv,noheader,nounits`` (no GPU: [])."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        done = subprocess.run(
            ["nvidia-smi", *query, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if done.returncode != 0:
        return []
    return [[cell.strip() for cell in line.split(",")] for line in done.stdout.splitlines() if line.strip()]


def device() -> dict[str, Any] | None:
    """The first NVIDIA GPU (``CUDA_VISIBLE_DEVICES`` picks which), or None."""
    rows = nvidia_smi("--query-gpu=index,name,memory.total,memory.free,compute_cap,driver_version")
    if not rows:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    row = next((row for row in rows if row[0] == visible), rows[0])
    return {
        "index": int(row[0]),
        "name": row[1],
        "total_mib": float(row[2]),
        "free_mib": float(row[3]),
        "compute_capability": row[4],
        "driver": row[5],
    }


def used_mib(index: int) -> float:
    rows = nvidia_smi(f"--id={index}", "--query-gpu=memory.used")
    return float(rows[0][0]) if rows else float("nan")


class PeakMemory:
    """The highest device memory use seen while the block runs (sampled every 50 ms)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.peak = used_mib(index)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, used_mib(self.index))

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()


def settle(index: int, seconds: float = 2.0) -> float:
    """Device memory once it stops moving (freed memory is returned asynchronously)."""
    time.sleep(seconds)
    return used_mib(index)


# ---- servers and requests ------------------------------------------------------------------------
@contextmanager
def server(config: dict[str, Any], workdir: Path, env: dict[str, str] | None = None) -> Iterator[Any]:
    from tests.processes import ServerProcess, start_lollms

    saved = {key: os.environ.get(key) for key in (env or {})}
    os.environ.update(env or {})
    try:
        process: ServerProcess = start_lollms(config, workdir, workdir / "server.log")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        yield process
    finally:
        process.stop()


def base(workdir: Path, key: str, **sections: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "server": {"auto_install_requirements": False},
        "logging": {"level": "WARNING"},
        "paths": {"models_folder": str(workdir / "models"), "runtime_folder": str(workdir / "run")},
        "security": {"api_keys": [{"key": key, "name": "check", "scopes": ["generate", "admin"]}]},
        "resource_manager": {"housekeeping_interval": 0.5},
    }
    config.update(sections)
    return config


def loaded(url: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    import httpx

    response = httpx.get(url + "/api/v1/status", headers=headers, timeout=30)
    response.raise_for_status()
    status = response.json()
    return [model for pool in status.get("pools", []) for model in pool.get("models") or []]


def wait_unloaded(url: str, headers: dict[str, str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while loaded(url, headers):
        if time.monotonic() > deadline:
            raise RuntimeError("the model was not unloaded after its idle time")
        time.sleep(0.5)


# ---- the checks ---------------------------------------------------------------------------------
def check_llama_build() -> dict[str, Any]:
    import llama_cpp

    result = {"version": llama_cpp.__version__, "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload())}
    if not result["gpu_offload"]:
        raise CheckFailed(
            "llama-cpp-python has no GPU backend (a CPU build): rebuild it with "
            "LOLLMS_REBUILD_LLAMA=1 scripts/install.sh, with nvcc on PATH",
            result,
        )
    return result


class CheckFailed(Exception):
    def __init__(self, message: str, partial: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.partial = partial or {}


def check_text(gpu: dict[str, Any], workdir: Path, tokens: int, threads: int) -> dict[str, Any]:
    """Offload, tokens/s through the server (1 and 4 clients) vs raw batched decode, unload."""
    import bench_text
    import httpx

    model = bench_text.mid_model()
    key = bench_text.KEY
    headers = {"Authorization": f"Bearer {key}"}
    before = settle(gpu["index"], 0.5)
    result: dict[str, Any] = {"model_mib": round(model.stat().st_size / 2**20, 1)}
    with server(
        base(
            workdir,
            key,
            resource_manager={
                "housekeeping_interval": 0.5,
                "pools": {"default": {"limit": 4, "queue_size": 64, "idle_unload_seconds": 5}},
            },
            bindings={
                "llm": {
                    "type": "llamacpp_binding",
                    "models_folder": str(model.parent),
                    "n_ctx": 2048,
                    "parallel": 4,
                    "n_threads": threads,
                }
            },
        ),
        workdir,
    ) as running:
        generate = running.url + "/api/v1/generate"
        asyncio.run(bench_text.bench_round(generate, model.name, 1, 8))  # load
        info = httpx.get(
            running.url + "/api/v1/get_model_info/llm",
            params={"model_name": model.name},
            headers=headers,
            timeout=30,
        ).json()
        result["n_gpu_layers"] = info.get("n_gpu_layers")
        result["gpu_offload"] = info.get("gpu_offload")
        ps = httpx.get(running.url + "/api/ps", headers=headers, timeout=30).json()
        result["size_vram"] = max((entry.get("size_vram", 0) for entry in ps.get("models", [])), default=0)
        result["loaded_mib"] = round(used_mib(gpu["index"]) - before, 1)
        for clients in (1, 4):
            served = asyncio.run(bench_text.bench_round(generate, model.name, clients, tokens))
            result[f"server_tokens_per_s_{clients}"] = round(served["tokens_per_s"], 1)
            result[f"server_worst_ttft_ms_{clients}"] = round(served["worst_ttft_ms"], 1)
            result["prompt_tokens"] = int(served["prompt_tokens"])
        wait_unloaded(running.url, headers)
        after = settle(gpu["index"])
        result["returned_mib"] = round(before + result["loaded_mib"] - after, 1)
        result["left_after_unload_mib"] = round(after - before, 1)
    for clients in (1, 4):
        raw = bench_text.batched_limit(
            model, clients, result["prompt_tokens"], tokens, threads, 2048, gpu_layers=-1
        )
        result[f"raw_tokens_per_s_{clients}"] = round(raw["tokens_per_s"], 1)
        result[f"ratio_{clients}"] = round(
            result[f"server_tokens_per_s_{clients}"] / result[f"raw_tokens_per_s_{clients}"], 3
        )
    problems = []
    if result["n_gpu_layers"] != -1 or not result["gpu_offload"]:
        problems.append(f'n_gpu_layers "auto" resolved to {result["n_gpu_layers"]}, not every layer')
    if not result["size_vram"]:
        problems.append("/api/ps reports size_vram 0")
    if result["loaded_mib"] < 0.5 * result["model_mib"]:
        problems.append(
            f"loading took {result['loaded_mib']} MiB of device memory for a {result['model_mib']} MiB model"
        )
    # the process keeps its CUDA context (and llama.cpp its backend) after the unload: what must
    # come back is the model's weights and KV cache
    if result["returned_mib"] < 0.8 * result["model_mib"]:
        problems.append(f"only {result['returned_mib']} MiB of device memory came back after the unload")
    if problems:
        raise CheckFailed("; ".join(problems), result)
    return result


def check_torch_unload(media: Path) -> dict[str, Any]:
    """The diffusers binding in this process: torch's allocated device memory before a load,
    loaded, and after the unload (exact: torch's own counters)."""
    import torch

    from lollms_server.core.bindings import BindingManager
    from lollms_server.core.config import config_from_dict

    config = config_from_dict(
        {
            "server": {"auto_install_requirements": False},
            "bindings": {
                "images": {"type": "diffusers_binding", "device": "cuda", "models_folder": str(media)}
            },
        },
        environ={},
    )

    async def cycle() -> tuple[int, int, int, int]:
        binding = await BindingManager(config).get("images")
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        await binding.load_model("tiny-sd")
        torch.cuda.synchronize()
        loaded = torch.cuda.memory_allocated()
        await binding.unload_model("tiny-sd")
        torch.cuda.synchronize()
        return before, loaded, torch.cuda.memory_allocated(), torch.cuda.memory_reserved()

    before, loaded, after, reserved = asyncio.run(cycle())
    result = {
        "loaded_mib": round((loaded - before) / 2**20, 3),
        "left_after_unload_mib": round((after - before) / 2**20, 3),
        "reserved_after_unload_mib": round(reserved / 2**20, 3),
    }
    if loaded <= before:
        raise CheckFailed("loading the pipeline on cuda allocated no device memory", result)
    if after - before > 2**20:
        raise CheckFailed("torch memory stayed allocated after the unload", result)
    return result


def media_models(root: Path) -> Path:
    from tests import tiny_media_models as tiny

    folder = root / "diffusers_binding"
    if not (folder / "tiny-sd").exists():
        tiny.build_tiny_stable_diffusion(folder / "tiny-sd")
    return folder


def image_request(url: str, headers: dict[str, str], size: int = 64) -> dict[str, Any]:
    import httpx

    response = httpx.post(
        url + "/v1/images/generations",
        json={
            "model": "images/tiny-sd",
            "prompt": "a red square",
            "size": f"{size}x{size}",
            "n": 1,
            "num_inference_steps": 2,
        },
        headers=headers,
        timeout=300,
    )
    if response.status_code != 200:
        raise CheckFailed(f"image request: {response.status_code} {response.text[:300]}")
    return dict(response.json())


def check_diffusers(gpu: dict[str, Any], workdir: Path, media: Path) -> dict[str, Any]:
    key = "gpu-check-key-0123456789"
    headers = {"Authorization": f"Bearer {key}"}
    before = settle(gpu["index"], 0.5)
    result: dict[str, Any] = {}
    config = base(
        workdir,
        key,
        resource_manager={
            "housekeeping_interval": 0.5,
            "pools": {"default": {"limit": 1, "queue_size": 16, "idle_unload_seconds": 5}},
        },
        bindings={
            "images": {
                "type": "diffusers_binding",
                "device": "cuda",
                "models_folder": str(media),
                "default_steps": 4,
            }
        },
    )
    with server(config, workdir) as running:
        with PeakMemory(gpu["index"]) as peak:
            started = time.perf_counter()
            answer = image_request(running.url, headers)
            result["image_seconds"] = round(time.perf_counter() - started, 3)
        result["images"] = len(answer.get("data", []))
        result["peak_mib"] = round(peak.peak - before, 1)
        status = loaded(running.url, headers)
        result["footprint_mb"] = max((float(model.get("footprint_mb") or 0) for model in status), default=0.0)
        wait_unloaded(running.url, headers)
        # what the server process keeps after the unload: its CUDA context, torch's cache
        result["left_after_unload_mib"] = round(settle(gpu["index"]) - before, 1)
    problems = []
    if result["images"] != 1:
        problems.append("no image came back")
    if result["peak_mib"] <= 0:
        problems.append("the image used no device memory (not on the GPU?)")
    if problems:
        raise CheckFailed("; ".join(problems), result)
    return result


def check_one_card(
    gpu: dict[str, Any], workdir: Path, media: Path, tokens: int, threads: int
) -> dict[str, Any]:
    """A text stream and an image at once, one card, two pools (the media pool one at a time)."""
    import bench_text
    import httpx

    model = bench_text.mid_model()
    key = bench_text.KEY
    headers = {"Authorization": f"Bearer {key}"}
    before = settle(gpu["index"], 0.5)
    config = base(
        workdir,
        key,
        resource_manager={
            "housekeeping_interval": 0.5,
            "pools": {"default": {"limit": 4, "queue_size": 64}, "media": {"limit": 1, "queue_size": 16}},
        },
        bindings={
            "llm": {
                "type": "llamacpp_binding",
                "models_folder": str(model.parent),
                "n_ctx": 2048,
                "parallel": 4,
                "n_threads": threads,
            },
            "images": {
                "type": "diffusers_binding",
                "device": "cuda",
                "models_folder": str(media),
                "pool": "media",
            },
        },
    )
    result: dict[str, Any] = {}
    with server(config, workdir) as running:
        generate = running.url + "/api/v1/generate"

        async def both() -> tuple[dict[str, float], dict[str, Any]]:
            text = asyncio.create_task(bench_text.bench_round(generate, model.name, 2, tokens))
            image = asyncio.to_thread(image_request, running.url, headers)
            return await text, await image

        with PeakMemory(gpu["index"]) as peak:
            text, image = asyncio.run(both())
        result["text_tokens_per_s"] = round(text["tokens_per_s"], 1)
        result["images"] = len(image.get("data", []))
        result["peak_mib"] = round(peak.peak - before, 1)
        result["models_loaded"] = sorted(f"{m['binding']}/{m['model']}" for m in loaded(running.url, headers))
        devices = httpx.get(running.url + "/api/v1/status", headers=headers, timeout=30).json().get("devices")
        if devices is not None:  # the device arbiter's report, when the server has one
            result["devices"] = devices
    if result["images"] != 1 or result["text_tokens_per_s"] <= 0:
        raise CheckFailed("text and image on one card: one of them was not served", result)
    if len(result["models_loaded"]) != 2:
        raise CheckFailed("text and image on one card: both models should stay loaded", result)
    return result


def check_first_run(gpu: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """The first start pulls the default repo from the local fake hub and chats, on the GPU."""
    import bench_text
    import httpx

    from tests.fixtures.fake_hub import FakeHub

    key = "gpu-check-key-0123456789"
    headers = {"Authorization": f"Bearer {key}"}
    data = bench_text.mid_model().read_bytes()
    with FakeHub.running() as hub:
        hub.state.add(DEFAULT_REPO, {DEFAULT_FILE: data})
        config = base(
            workdir,
            key,
            models={"pull_default_on_start": True},
            defaults={"ttt_binding": "local_llm"},
            bindings={"local_llm": {"type": "llamacpp_binding", "n_ctx": 2048}},
        )
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "LOLLMS_DEFAULT_MODEL": ""}
        started = time.perf_counter()
        with server(config, workdir, env) as running:
            deadline = time.monotonic() + 300
            while True:  # a 503 while the pull starts (before its plan is known): try again
                chat = httpx.post(
                    running.url + "/v1/chat/completions",
                    json={"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8},
                    headers=headers,
                    timeout=300,
                )
                if chat.status_code != 503 or time.monotonic() > deadline:
                    break
                time.sleep(1)
            seconds = round(time.perf_counter() - started, 2)
            state = httpx.get(running.url + "/api/v1/models/default", headers=headers, timeout=30).json()
            info = httpx.get(
                running.url + "/api/v1/get_model_info/local_llm",
                params={"model_name": state.get("model") or ""},
                headers=headers,
                timeout=30,
            ).json()
    result = {
        "chat_status": chat.status_code,
        "seconds_to_first_answer": seconds,
        "model": state.get("model"),
        "n_gpu_layers": info.get("n_gpu_layers"),
        "config_names_model": f'ttt_model = "{DEFAULT_REPO}/{DEFAULT_FILE}"'
        in (workdir / "config.toml").read_text(),
    }
    problems = []
    if chat.status_code != 200:
        problems.append(f"the chat answered {chat.status_code}: {chat.text[:300]}")
    if not result["config_names_model"]:
        problems.append("config.toml does not name the pulled model")
    if result["n_gpu_layers"] != -1:
        problems.append(f"the model runs with n_gpu_layers {result['n_gpu_layers']}, not on the GPU")
    if problems:
        raise CheckFailed("; ".join(problems), result)
    return result


# ---- the run ---------------------------------------------------------------------------------------
def run_check(report: dict[str, Any], name: str, check: Callable[[], dict[str, Any]]) -> None:
    started = time.perf_counter()
    print(f"-- {name}", file=sys.stderr, flush=True)
    try:
        report[name] = check()
    except CheckFailed as exc:
        report[name] = {**exc.partial, "error": str(exc)}
        report["failures"].append(f"{name}: {exc}")
    except Exception as exc:  # noqa: BLE001 - every check runs; the report says what broke
        report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        report["failures"].append(f"{name}: {type(exc).__name__}: {exc}")
    report[name]["seconds"] = round(time.perf_counter() - started, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_check.json", help="where the JSON goes")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per client in the text measures")
    parser.add_argument("--threads", type=int, default=4, help="CPU threads of llama.cpp")
    args = parser.parse_args(argv)
    gpu = device()
    report: dict[str, Any] = {
        "gpu": gpu is not None,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    if gpu is None:
        report["reason"] = "no NVIDIA GPU: nvidia-smi is missing or finds no device"
        try:
            import llama_cpp

            report["llama_cpp_gpu_offload"] = bool(llama_cpp.llama_supports_gpu_offload())
        except ImportError:
            report["llama_cpp_gpu_offload"] = None
    else:
        report["device"] = gpu
        report["failures"] = []
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
            root = Path(tmp)
            media = media_models(root / "media")
            run_check(report, "llama_cpp", check_llama_build)
            run_check(report, "text", lambda: check_text(gpu, make(root / "text"), args.tokens, args.threads))
            run_check(report, "diffusers", lambda: check_diffusers(gpu, make(root / "images"), media))
            run_check(report, "torch_unload", lambda: check_torch_unload(media))
            run_check(
                report,
                "one_card",
                lambda: check_one_card(gpu, make(root / "one-card"), media, args.tokens, args.threads),
            )
            run_check(report, "first_run", lambda: check_first_run(gpu, make(root / "first-run")))
        report["ok"] = not report["failures"]
    text = json.dumps(report, indent=2)
    Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0 if gpu is None or report["ok"] else 1


def make(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


if __name__ == "__main__":
    sys.exit(main())
