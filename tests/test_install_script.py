"""``scripts/install.sh`` with ``LOLLMS_INSTALL_DRY_RUN=1``: the plan it prints for the machine it
finds (fake ``nvidia-smi``, ``nvcc`` and ``uname`` on ``PATH``), and nothing installed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

NVIDIA_SMI = """#!/bin/sh
case "$*" in
  *query-gpu*) echo "NVIDIA H100 80GB HBM3, 9.0" ;;
  *) echo "| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: {cuda} |" ;;
esac
"""
NVCC = '#!/bin/sh\necho "Cuda compilation tools, release 12.4, V12.4.131"\n'
UNAME = '#!/bin/sh\ncase "$1" in -s) echo Darwin ;; -m) echo arm64 ;; *) echo Darwin ;; esac\n'


def plan(tmp_path: Path, extras: str = "llamacpp", **tools: str) -> str:
    """The dry run's output with these fake tools (name -> script) first on PATH."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    for name, script in tools.items():
        (fake / name).write_text(script, encoding="utf-8")
        (fake / name).chmod(0o755)
    venv = tmp_path / "venv"
    env = {
        key: value for key, value in os.environ.items() if key not in ("CMAKE_ARGS", "LOLLMS_REBUILD_LLAMA")
    }
    env.update(
        PATH=f"{fake}:/usr/bin:/bin",
        LOLLMS_VENV=str(venv),
        LOLLMS_INSTALL_DRY_RUN="1",
        CUDA_HOME=str(tmp_path / "no-cuda"),
    )
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "install.sh"), extras],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert not venv.exists()  # nothing installed, not even the venv
    return done.stdout


def test_nvidia_gpu_with_nvcc_builds_llama_cpp_with_cuda_for_its_architecture(tmp_path: Path) -> None:
    output = plan(
        tmp_path, "llamacpp,diffusers", **{"nvidia-smi": NVIDIA_SMI.format(cuda="12.4"), "nvcc": NVCC}
    )
    assert "dry run" in output and f"creating virtual environment {tmp_path / 'venv'}" in output
    assert ">> NVIDIA GPU: NVIDIA H100 80GB HBM3, 9.0 (driver CUDA 12.4)" in output
    assert ">> llama.cpp build: CUDA, compiled with" in output
    assert "-DGGML_CUDA=on" in output and "-DCMAKE_CUDA_ARCHITECTURES=90" in output
    assert "torch==2.13.0 (GPU build)" in output
    assert "would run:" in output and "-e .\\[llamacpp\\,diffusers\\]" in output
    assert "WARNING" not in output


def test_nvidia_gpu_without_nvcc_takes_the_wheel_index_then_the_cpu_build_with_a_warning(
    tmp_path: Path,
) -> None:
    output = plan(tmp_path, **{"nvidia-smi": NVIDIA_SMI.format(cuda="12.4")})
    wheel = output.index("prebuilt wheel (https://abetlen.github.io/llama-cpp-python/whl/cu124")
    assert (
        "--only-binary llama-cpp-python --extra-index-url https://abetlen.github.io/llama-cpp-python/whl/cu124"
        in output
    )
    fallback = output.index(">> llama.cpp build: CPU")
    assert wheel < fallback
    assert "WARNING: no CUDA compiler (nvcc)" in output and "install the CUDA toolkit" in output
    assert "-DGGML_CUDA=on" not in output


def test_a_driver_older_than_every_wheel_gets_the_cpu_build_with_a_warning(tmp_path: Path) -> None:
    output = plan(tmp_path, **{"nvidia-smi": NVIDIA_SMI.format(cuda="11.8")})
    assert "prebuilt wheel (" not in output
    assert (
        ">> llama.cpp build: CPU" in output
        and "WARNING: the driver's CUDA 11.8 has no prebuilt wheel" in output
    )


def test_no_gpu_gets_the_portable_cpu_build(tmp_path: Path) -> None:
    output = plan(tmp_path, "llamacpp,transformers")
    assert (
        ">> llama.cpp build: CPU (CMAKE_ARGS=-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DLLAMA_OPENSSL=OFF)"
        in output
    )
    assert "NVIDIA" not in output and "WARNING" not in output
    assert "torch==2.13.0 (CPU build)" in output and "download.pytorch.org/whl/cpu" in output


def test_apple_silicon_gets_metal(tmp_path: Path) -> None:
    output = plan(tmp_path, uname=UNAME)
    assert ">> llama.cpp build: Metal" in output


@pytest.mark.parametrize("extras", ["openai", "transformers"])
def test_extras_without_llama_cpp_plan_no_llama_cpp_build(tmp_path: Path, extras: str) -> None:
    assert "llama.cpp build" not in plan(tmp_path, extras)
