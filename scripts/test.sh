#!/usr/bin/env bash
# Install lollms_server with its test extras, then run the whole suite: lint, types, tests.
# Extra arguments go to pytest (e.g. -k tokenize, -m "not e2e").
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LOLLMS_VENV:-.venv}"

scripts/install.sh "${LOLLMS_TEST_EXTRAS:-all,distributed,dev,lollms_client}"
export OMP_WAIT_POLICY=passive HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

echo ">> ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
echo ">> mypy"
"$VENV/bin/mypy" lollms_server
echo ">> pytest"
# Two runs (the arguments go to both; tests/conftest.py splits the suite on LOLLMS_TEST_PART): the
# tests marked distributed start a Ray cluster that must listen on 127.0.0.1 only, so they run in a
# network namespace with nothing but loopback (unshare -n, as root), or skip with the reason why not.
PYTEST=("$VENV/bin/python" -m pytest)
local_status=0
distributed_status=0
LOLLMS_TEST_PART=local "${PYTEST[@]}" "$@" || local_status=$?
echo ">> pytest: tests marked distributed, in a network namespace with only loopback"
if netns_error=$(unshare -n sh -c 'ip link set lo up' 2>&1); then
    LOLLMS_TEST_PART=distributed unshare -n sh -c 'ip link set lo up && exec "$@"' sh "${PYTEST[@]}" -rs "$@" \
        || distributed_status=$?
else
    reason="no loopback-only network namespace (\`unshare -n\` + \`ip link set lo up\` as root): ${netns_error:-failed}"
    echo ">> skipping them: $reason"
    LOLLMS_TEST_PART=distributed LOLLMS_TEST_NO_NETNS="$reason" "${PYTEST[@]}" -rs "$@" || distributed_status=$?
fi
# pytest exits with 5 when it collects no test: fine for one run (the arguments may select tests of
# one kind only), a failure when neither run collected any
for status in "$local_status" "$distributed_status"; do
    case "$status" in 0 | 5) ;; *) exit "$status" ;; esac
done
[ "$local_status$distributed_status" != 55 ] || exit 5
