"""``scripts/gpu_check.py`` where there is no GPU (it says so in its JSON and exits 0), and its
reading of ``nvidia-smi`` (a fake one on ``PATH``): the GPU path itself needs a GPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "gpu_check.py"
NVIDIA_SMI = """#!/bin/sh
case "$*" in
  *memory.used*) echo "1234" ;;
  *query-gpu=index*)
    echo "0, NVIDIA H100 80GB HBM3, 81559, 80000, 9.0, 550.54.15"
    echo "1, NVIDIA L4, 23034, 22000, 8.9, 550.54.15" ;;
  *) exit 1 ;;
esac
"""


def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_a_gpu_it_says_so_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PATH": f"{tmp_path}:/usr/bin:/bin"}  # no nvidia-smi there
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["gpu"] is False and "no NVIDIA GPU" in report["reason"]
    assert report["llama_cpp_gpu_offload"] in (False, True, None)
    assert json.loads(done.stdout) == report


def test_it_reads_the_device_from_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text(NVIDIA_SMI, encoding="utf-8")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    module = script()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert module.device() == {
        "index": 0,
        "name": "NVIDIA H100 80GB HBM3",
        "total_mib": 81559.0,
        "free_mib": 80000.0,
        "compute_capability": "9.0",
        "driver": "550.54.15",
    }
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert module.device()["name"] == "NVIDIA L4"
    assert module.used_mib(0) == 1234.0
    fake.write_text("#!/bin/sh\nexit 9\n", encoding="utf-8")  # a broken driver: no GPU
    assert module.device() is None


def test_the_gpu_box_command_refuses_a_machine_without_a_gpu(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{tmp_path}:/usr/bin:/bin"}
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_prepare.sh"), "run"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 1 and "nvidia-smi not found" in done.stderr
    usage = subprocess.run(["bash", str(REPO / "scripts" / "gpu_prepare.sh")], capture_output=True, text=True)
    assert usage.returncode == 2 and "gather BUNDLE" in usage.stderr
