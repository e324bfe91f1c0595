#!/usr/bin/env bash
# Create the virtual environment if needed and install lollms_server with the given extras.
#
#   scripts/install.sh [EXTRAS]        e.g. scripts/install.sh llamacpp,dev
#
# Environment: LOLLMS_VENV (default .venv), PYTHON (default python3), CMAKE_ARGS (llama.cpp build).
# torch: an already installed torch is kept; extras that need it get torch==2.13.0, the CPU build
# on machines without an NVIDIA GPU (an unpinned torch would pull gigabytes of CUDA packages).
set -euo pipefail
cd "$(dirname "$0")/.."

EXTRAS="${1:-llamacpp}"
VENV="${LOLLMS_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"

if [ ! -x "$VENV/bin/python" ]; then
    echo ">> creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip

needs_torch=false
case ",$EXTRAS," in
    *,transformers,*|*,diffusers,*|*,audio,*|*,video,*|*,all,*) needs_torch=true ;;
esac
if $needs_torch; then
    if "$PY" -c "import torch" 2>/dev/null; then
        echo ">> keeping installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
        echo ">> installing torch==$TORCH_VERSION (GPU build)"
        "$PY" -m pip install --quiet "torch==$TORCH_VERSION"
    else
        echo ">> installing torch==$TORCH_VERSION (CPU build)"
        "$PY" -m pip install --quiet "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu --timeout 20 --retries 0 \
            || "$PY" -m pip install --quiet "torch==$TORCH_VERSION"
    fi
fi

case ",$EXTRAS," in
    *,llamacpp,*|*,all,*)
        if ! "$PY" -c "import llama_cpp" 2>/dev/null; then
            # portable build (no -march=native), no multimodal tools, no network code
            export CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DLLAMA_OPENSSL=OFF}"
            echo ">> llama-cpp-python compiles from source the first time (several minutes; pip caches it)"
        fi ;;
esac

# lollms_client: the pinned package without its heavy optional dependencies (pymupdf4llm pulls
# onnxruntime), then what its bindings need (the list of the lollms_client extra in pyproject.toml)
case ",$EXTRAS," in
    *,lollms_client,*)
        EXTRAS="$(echo ",$EXTRAS," | sed 's/,lollms_client,/,/g; s/^,//; s/,$//')"
        echo ">> installing lollms-client==1.21.1 (--no-deps) and its bindings' dependencies"
        "$PY" -m pip install --quiet --no-deps "lollms-client==1.21.1"
        "$PY" -m pip install --quiet "openai>=2.32" tiktoken httpx requests "ascii-colors>=0.13.0" \
            "pipmaster>=1.2.0" pyyaml pydantic numpy pillow sqlalchemy jsonschema filelock ;;
esac

echo ">> installing lollms_server[$EXTRAS]"
"$PY" -m pip install --quiet -e ".${EXTRAS:+[$EXTRAS]}"
