#!/usr/bin/env bash
# Create the virtual environment if needed and install lollms_server with the given extras.
#
#   scripts/install.sh [EXTRAS]        e.g. scripts/install.sh llamacpp,dev
#
# Environment: LOLLMS_VENV (default .venv), PYTHON (default python3), CMAKE_ARGS (llama.cpp build
# flags: set, they win over the choice below), LOLLMS_REBUILD_LLAMA=1 (reinstall llama-cpp-python,
# e.g. after installing the CUDA toolkit), LOLLMS_INSTALL_DRY_RUN=1 (print the plan, install nothing).
#
# torch: an already installed torch is kept; extras that need it get torch==2.13.0, the CPU build
# on machines without an NVIDIA GPU (an unpinned torch would pull gigabytes of CUDA packages).
#
# llama.cpp (extras llamacpp, all) uses the GPU when there is one:
#   - NVIDIA GPU (nvidia-smi answers) and the CUDA compiler (nvcc on PATH or in $CUDA_HOME/bin,
#     default /usr/local/cuda/bin):
#     built from source with -DGGML_CUDA=on for this GPU's architecture;
#   - NVIDIA GPU without nvcc: llama-cpp-python's prebuilt CUDA wheel for the driver's CUDA version
#     (https://abetlen.github.io/llama-cpp-python/whl/cu12X); if there is none, the CPU build, with
#     a warning saying what to install;
#   - Apple silicon: Metal (llama.cpp's default there);
#   - otherwise: the CPU build.
# It prints which build it chose.
set -euo pipefail
cd "$(dirname "$0")/.."

EXTRAS="${1:-llamacpp}"
VENV="${LOLLMS_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"
LLAMA_SPEC="llama-cpp-python>=0.3.0"
WHEEL_INDEX="https://abetlen.github.io/llama-cpp-python/whl"
WHEEL_CUDA_VERSIONS="121 122 123 124 125"  # the CUDA builds that index publishes
DRY_RUN="${LOLLMS_INSTALL_DRY_RUN:-0}"

# run a command, or only print it in a dry run
run() {
    if [ "$DRY_RUN" = "1" ]; then
        printf '   would run:'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

[ "$DRY_RUN" = "1" ] && echo ">> dry run (LOLLMS_INSTALL_DRY_RUN=1): the plan; nothing is installed"
echo ">> extras: $EXTRAS"

if [ ! -x "$VENV/bin/python" ]; then
    echo ">> creating virtual environment $VENV ($PYTHON)"
    run "$PYTHON" -m venv "$VENV"
else
    echo ">> virtual environment $VENV (exists)"
fi
PY="$VENV/bin/python"
# installed in the venv (a venv not made yet, in a dry run, has nothing)
has_module() { [ -x "$PY" ] && "$PY" -c "import $1" 2>/dev/null; }
run "$PY" -m pip install --quiet --upgrade pip

nvidia_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; }
find_nvcc() {
    if command -v nvcc >/dev/null 2>&1; then
        command -v nvcc
    elif [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then
        echo "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"
    fi
}

needs_torch=false
case ",$EXTRAS," in
    *,transformers,*|*,diffusers,*|*,audio,*|*,video,*|*,all,*) needs_torch=true ;;
esac
if $needs_torch; then
    if has_module torch; then
        echo ">> torch: keeping the installed $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo torch)"
    elif nvidia_gpu; then
        echo ">> torch: torch==$TORCH_VERSION (GPU build)"
        run "$PY" -m pip install --quiet "torch==$TORCH_VERSION"
    else
        echo ">> torch: torch==$TORCH_VERSION (CPU build)"
        if [ "$DRY_RUN" = "1" ]; then
            run "$PY" -m pip install --quiet "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu
        else
            "$PY" -m pip install --quiet "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu --timeout 20 --retries 0 \
                || "$PY" -m pip install --quiet "torch==$TORCH_VERSION"
        fi
    fi
else
    echo ">> torch: not needed by these extras"
fi

# ---- llama.cpp ---------------------------------------------------------------------------------
cpu_build() {
    # portable build (no -march=native), no multimodal tools, no network code
    echo ">> llama.cpp build: CPU (CMAKE_ARGS=$CPU_ARGS)"
    [ -n "${1:-}" ] && echo "   WARNING: $1"
    echo "   llama-cpp-python compiles from source the first time (several minutes; pip caches it)"
    CMAKE_ARGS="$CPU_ARGS" run "$PY" -m pip install --quiet $REINSTALL "$LLAMA_SPEC"
}
CPU_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DLLAMA_OPENSSL=OFF"
REINSTALL=""
[ "${LOLLMS_REBUILD_LLAMA:-0}" = "1" ] && REINSTALL="--force-reinstall --no-deps --no-cache-dir"

case ",$EXTRAS," in
    *,llamacpp,*|*,all,*)
        if has_module llama_cpp && [ -z "$REINSTALL" ]; then
            offload="$("$PY" -c 'import llama_cpp; print(llama_cpp.llama_supports_gpu_offload())' 2>/dev/null || echo False)"
            echo ">> llama.cpp build: keeping the installed llama-cpp-python (GPU offload: $offload)"
            if [ "$offload" != "True" ] && nvidia_gpu; then
                echo "   WARNING: this GPU is not used by the installed llama-cpp-python (a CPU build):"
                echo "   rerun with LOLLMS_REBUILD_LLAMA=1 to build it for the GPU"
            fi
        elif [ -n "${CMAKE_ARGS:-}" ]; then
            echo ">> llama.cpp build: your CMAKE_ARGS=$CMAKE_ARGS"
            run "$PY" -m pip install --quiet --no-cache-dir $REINSTALL "$LLAMA_SPEC"
        elif [ "$(uname -s)" = "Darwin" ] && [ "$(uname -m)" = "arm64" ]; then
            echo ">> llama.cpp build: Metal (Apple silicon; llama.cpp's default there)"
            CMAKE_ARGS="-DGGML_METAL=on -DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF" \
                run "$PY" -m pip install --quiet --no-cache-dir $REINSTALL "$LLAMA_SPEC"
        elif nvidia_gpu; then
            gpu="$(nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader 2>/dev/null | head -n 1 || true)"
            cuda_version="$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1)"
            cuda="$(printf '%s' "$cuda_version" | tr -d .)"
            arch="$(printf '%s' "$gpu" | sed -n 's/.*, *\([0-9]*\)\.\([0-9]*\) *$/\1\2/p')"
            nvcc="$(find_nvcc)"
            echo ">> NVIDIA GPU: ${gpu:-unknown} (driver CUDA ${cuda_version:-unknown})"
            if [ -n "$nvcc" ]; then
                flags="-DGGML_CUDA=on -DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF"
                [ -n "$arch" ] && flags="$flags -DCMAKE_CUDA_ARCHITECTURES=$arch"
                echo ">> llama.cpp build: CUDA, compiled with $nvcc (CMAKE_ARGS=$flags; several minutes)"
                CUDACXX="$nvcc" CMAKE_ARGS="$flags" \
                    run "$PY" -m pip install --quiet --no-cache-dir $REINSTALL "$LLAMA_SPEC"
            else
                wheel=""
                for version in $WHEEL_CUDA_VERSIONS; do  # the newest the driver runs
                    if [ -n "$cuda" ] && [ "$cuda" -ge "$version" ]; then wheel="cu$version"; fi
                done
                missing="no CUDA compiler (nvcc): llama.cpp runs on the CPU. For the GPU, install the CUDA toolkit (https://developer.nvidia.com/cuda-downloads, or your distribution's nvidia-cuda-toolkit), put nvcc on PATH and rerun with LOLLMS_REBUILD_LLAMA=1"
                if [ -n "$wheel" ]; then
                    echo ">> llama.cpp build: CUDA, llama-cpp-python's prebuilt wheel ($WHEEL_INDEX/$wheel; no nvcc here)"
                    if ! run "$PY" -m pip install --quiet $REINSTALL --only-binary llama-cpp-python \
                        --extra-index-url "$WHEEL_INDEX/$wheel" "$LLAMA_SPEC"; then
                        cpu_build "no prebuilt CUDA wheel fits; $missing"
                    elif [ "$DRY_RUN" = "1" ]; then
                        echo "   if no wheel fits:"
                        cpu_build "$missing"
                    fi
                else
                    cpu_build "the driver's CUDA ${cuda_version:-version} has no prebuilt wheel; $missing"
                fi
            fi
        else
            cpu_build ""
        fi ;;
esac

# lollms_client: the pinned package without its heavy optional dependencies (pymupdf4llm pulls
# onnxruntime), then what its bindings need (the list of the lollms_client extra in pyproject.toml)
case ",$EXTRAS," in
    *,lollms_client,*)
        EXTRAS="$(echo ",$EXTRAS," | sed 's/,lollms_client,/,/g; s/^,//; s/,$//')"
        echo ">> installing lollms-client==1.21.1 (--no-deps) and its bindings' dependencies"
        run "$PY" -m pip install --quiet --no-deps "lollms-client==1.21.1"
        run "$PY" -m pip install --quiet "openai>=2.32" tiktoken httpx requests "ascii-colors>=0.13.0" \
            "pipmaster>=1.2.0" pyyaml pydantic numpy pillow sqlalchemy jsonschema filelock ;;
esac

echo ">> installing lollms_server[$EXTRAS]"
run "$PY" -m pip install --quiet -e ".${EXTRAS:+[$EXTRAS]}"
