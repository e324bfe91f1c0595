#!/usr/bin/env bash
# Run scripts/gpu_check.py on a bare, offline GPU box: gather everything on a machine with the
# package registry, carry one folder (at most 64 MiB), run one command there.
#
# 1. On a machine with PyPI (any OS/Python; the wheels are picked for Linux x86_64, CPython 3.12):
#
#        scripts/gpu_prepare.sh gather BUNDLE        # e.g. scripts/gpu_prepare.sh gather /tmp/gpu-bundle
#
#    BUNDLE then holds this checkout's tracked files (git archive of HEAD), wheels/ (the server's
#    dependencies for the check: core, diffusers, transformers, gguf, numpy; accelerate without its
#    torch dependency; no torch: the box has its own CUDA build) and llama-cpp-python's source
#    trimmed to what its build reads (no vocabulary test files, docs or git pack). It fails when
#    the folder is over 64 MiB. Left out: numpy (a PyTorch box has it; `run` checks) and packages
#    the check never imports; LOLLMS_PREPARE_SKIP="..." names the wheels to leave out instead.
#
# 2. On the GPU box (Python 3.12 with a CUDA PyTorch, nvcc and CMake; no network), in BUNDLE:
#
#        bash scripts/gpu_prepare.sh run             # about 10 minutes: install, build, check
#
#    It makes a virtual environment that sees the system's torch (--system-site-packages),
#    installs the wheels offline, builds llama.cpp with CUDA for this card's architecture only
#    (CMAKE_CUDA_ARCHITECTURES from nvidia-smi's compute_cap), runs scripts/gpu_check.py and
#    writes gpu_check.json (its exit status is the check's).
#
# Environment: PYTHON (default python3.12, then python3), LLAMA_CPP_VERSION (default: the newest),
# LOLLMS_PREPARE_SKIP (wheels to leave out, by project name), MAX_BUNDLE_MIB (default 64).
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
MAX_BUNDLE_MIB="${MAX_BUNDLE_MIB:-64}"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# what the check imports (pyproject's core dependencies without uvicorn's optional speedups, the
# media extras, the tiny model builders) and llama-cpp-python's build and run requirements
REQUIREMENTS=(
    fastapi uvicorn "pydantic>=2.6" toml httpx pipmaster ascii_colors filelock Pillow python-multipart
    PyYAML platformdirs prometheus-client anyio "huggingface_hub>=0.26" tomlkit "sqlalchemy>=2.0"
    "diffusers>=0.30" "transformers>=4.45" "safetensors>=0.4" "tokenizers>=0.20" "gguf>=0.10" numpy psutil
    jinja2 diskcache typing-extensions "scikit-build-core[pyproject]>=0.9.2" pathspec packaging
)

# left out by default (LOLLMS_PREPARE_SKIP replaces this list; "" keeps every wheel): numpy, which
# a PyTorch box has (and `run` checks first: without it the bundle is over 64 MiB), and what the
# check never imports (hub downloads over xet, hub kernels, telemetry)
LEAVE_OUT="numpy hf_xet kernels opentelemetry_api"

gather() {
    local bundle="$1" python="${PYTHON:-python3}"
    mkdir -p "$bundle/wheels"
    bundle="$(cd "$bundle" && pwd)"
    echo ">> the project (git archive of HEAD) into $bundle"
    git -C "$HERE" archive HEAD | tar -x -C "$bundle"
    echo ">> wheels for CPython 3.12 on Linux x86_64"
    local common=(--dest "$bundle/wheels" --only-binary=:all: --python-version 3.12 --implementation cp
        --abi cp312 --abi abi3 --abi none "${PLATFORMS[@]}" --platform any --quiet)
    "$python" -m pip download "${common[@]}" "${REQUIREMENTS[@]}"
    "$python" -m pip download "${common[@]}" --no-deps "accelerate>=0.30"  # its torch: the box's own
    for name in ${LOLLMS_PREPARE_SKIP-$LEAVE_OUT}; do
        find "$bundle/wheels" -iname "$(echo "$name" | tr - _)-*.whl" -print -delete
    done
    echo ">> llama-cpp-python's source, trimmed to what its build reads"
    local work
    work="$(mktemp -d)"
    "$python" -m pip download --quiet --no-deps --no-binary :all: --dest "$work" \
        "llama-cpp-python${LLAMA_CPP_VERSION:+==$LLAMA_CPP_VERSION}"
    tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
    local source
    source="$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'llama_cpp_python-*' | head -n 1)"
    local vendor="$source/vendor/llama.cpp"
    rm -rf "$source/docs" "$source/examples" "$source/tests" "$vendor/docs" "$vendor/media" \
        "$vendor/.git" "$vendor/.github" "$vendor/.devops" "$vendor/tests" "$vendor/gguf-py" \
        "$vendor/examples"/*/*.gguf
    find "$vendor/models" -type f \( -name 'ggml-vocab-*' -o -name '*.gguf' -o -name '*.inp' -o -name '*.out' \) -delete
    find "$source" -name '.git' -prune -exec rm -rf {} +
    tar -czf "$bundle/$(basename "$source").tar.gz" -C "$work" "$(basename "$source")"
    rm -rf "$work"
    local size
    size="$(du -sm "$bundle" | cut -f1)"
    echo ">> $bundle: ${size} MiB (limit ${MAX_BUNDLE_MIB} MiB)"
    if [ "$size" -gt "$MAX_BUNDLE_MIB" ]; then
        echo "the bundle is over ${MAX_BUNDLE_MIB} MiB; the largest files:" >&2
        find "$bundle" -type f -printf '%s %p\n' | sort -rn | head -n 10 >&2
        echo "leave out wheels the GPU box already has: LOLLMS_PREPARE_SKIP=\"$LEAVE_OUT pillow\"" >&2
        return 1
    fi
    echo ">> on the GPU box:  cd BUNDLE && bash scripts/gpu_prepare.sh run"
}

run() {
    cd "$HERE"
    local python="${PYTHON:-}"
    if [ -z "$python" ]; then
        python="$(command -v python3.12 || command -v python3)"
    fi
    command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found: no NVIDIA GPU here" >&2; exit 1; }
    local nvcc
    nvcc="$(command -v nvcc || echo "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc")"
    [ -x "$nvcc" ] || { echo "nvcc not found: put the CUDA toolkit's bin on PATH or set CUDA_HOME" >&2; exit 1; }
    local arch
    arch="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d ' .')"
    echo ">> $(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1), architecture $arch, $nvcc"
    echo ">> virtual environment .gpu-venv (sees the system's torch)"
    "$python" -m venv --system-site-packages .gpu-venv
    local py=.gpu-venv/bin/python
    "$py" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print('torch', torch.__version__, torch.version.cuda)"
    "$py" -c "import numpy" 2>/dev/null || [ -n "$(ls wheels/numpy-*.whl 2>/dev/null)" ] || {
        echo "numpy is missing on this box and in the bundle: gather with LOLLMS_PREPARE_SKIP=\"\"" >&2
        exit 1
    }
    echo ">> wheels, offline (--no-deps: the bundle leaves out what the check never imports)"
    "$py" -m pip install --quiet --no-index --no-deps wheels/*.whl
    echo ">> llama-cpp-python with CUDA for sm_$arch (CMAKE_BUILD_PARALLEL_LEVEL=$(nproc))"
    local source
    source="$(ls llama_cpp_python-*.tar.gz | head -n 1)"
    CUDACXX="$nvcc" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$arch -DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=OFF" \
        "$py" -m pip install --no-index --find-links wheels --no-build-isolation --no-deps "./$source"
    "$py" -c "import llama_cpp; assert llama_cpp.llama_supports_gpu_offload(), 'llama.cpp was built without CUDA'"
    echo ">> scripts/gpu_check.py"
    HF_HUB_OFFLINE=1 PYTHONPATH="$HERE" "$py" scripts/gpu_check.py --out gpu_check.json
}

case "${1:-}" in
    gather) [ -n "${2:-}" ] || { echo "usage: $0 gather BUNDLE" >&2; exit 2; }; gather "$2" ;;
    run) run ;;
    *) echo "usage: $0 gather BUNDLE | $0 run   (see the top of this file)" >&2; exit 2 ;;
esac
