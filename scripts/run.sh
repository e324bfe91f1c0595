#!/usr/bin/env bash
# Install lollms_server (llama.cpp text binding included) and start it.
# The first run writes config.toml with a new API key and prints the key once.
# Extra arguments go to lollms-server (e.g. --port 9700). LOLLMS_EXTRAS picks other extras.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LOLLMS_VENV:-.venv}"

scripts/install.sh "${LOLLMS_EXTRAS:-llamacpp}"
if [ ! -f config.toml ]; then
    "$VENV/bin/lollms-server" init config.toml
fi
# the installed models, and the command that gets the default text model when it is missing
"$VENV/bin/lollms-server" models --config config.toml || true
exec "$VENV/bin/lollms-server" --config config.toml "$@"
