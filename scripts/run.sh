#!/usr/bin/env bash
# Install lollms_server (llama.cpp text binding included), get a text model, start the server and
# chat with it once.
#
# The first run writes config.toml with a new API key (printed once), pulls the default text model
# with progress bars (Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M, ~0.4 GB; LOLLMS_DEFAULT_MODEL picks
# another; HF_ENDPOINT another hub), starts the server, sends it one chat and prints the answer; the
# server then keeps running in the foreground (Ctrl-C stops it). Offline (HF_HUB_OFFLINE=1, no
# network) the server still starts and this prints the command and the folder that get a model.
# Later runs chat only with LOLLMS_API_KEY set (the config keeps only the key's hash).
#
# Extra arguments go to lollms-server (e.g. --port 9700). LOLLMS_EXTRAS picks other extras;
# LOLLMS_SKIP_INSTALL=1 uses the virtual environment as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LOLLMS_VENV:-.venv}"
SERVER="$VENV/bin/lollms-server"

if [ "${LOLLMS_SKIP_INSTALL:-0}" != "1" ]; then
    scripts/install.sh "${LOLLMS_EXTRAS:-llamacpp}"
fi
key="${LOLLMS_API_KEY:-}"
if [ ! -f config.toml ]; then
    init_output="$("$SERVER" init config.toml)"
    printf '%s\n' "$init_output"
    # the key is the one indented line of init's message
    key="$(printf '%s\n' "$init_output" | sed -n 's/^    \([^ ].*\)$/\1/p' | head -n 1)"
fi
# the default text model, in the foreground with progress bars (the server would pull it in the
# background); offline this prints what to do, and the server starts all the same
"$SERVER" --config config.toml pull || true
"$SERVER" --config config.toml models || true

"$SERVER" --config config.toml "$@" &
server=$!
trap 'kill "$server" 2>/dev/null || true' INT TERM
LOLLMS_API_KEY="$key" "$SERVER" --config config.toml "$@" chat --wait 120 || true
wait "$server"
