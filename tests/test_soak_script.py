"""scripts/soak.py runs end to end (briefly): chaos traffic, then every check passes (no unexpected 5xx,
answers of the right class, pools idle at the end)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.e2e
def test_soak_short_run_passes_its_checks() -> None:
    completed = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "soak.py"),
            "--clients",
            "8",
            "--seconds",
            "10",
            "--max-requests",
            "600",
            "--warmup-seconds",
            "3",
            "--stall-seconds",
            "6",
        ],
        capture_output=True,
        text=True,
        timeout=420,
        cwd=REPO,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary["failures"] == [], output
    assert summary["unexpected_5xx"] == 0 and summary["mismatched"] == 0, output
    assert summary["incomplete_streams"] == 0 and summary["transport_errors"] == 0, output
    assert 50 <= summary["requests"] <= 600, output
    assert sum(summary["statuses"].values()) == summary["requests"], output
    assert summary["statuses"].get("200", 0) > summary["requests"] // 3, output
    for status in ("401", "413"):  # the hostile kinds were refused as such
        assert summary["statuses"].get(status, 0) > 0, output
    assert summary["statuses"].get("400", 0) + summary["statuses"].get("422", 0) > 0, output
    for kind in ("native", "native_stream", "chat", "chat_stream", "malformed", "oversized", "bad_key"):
        assert summary["latency"][kind]["good"] > 0, (kind, output)
    assert all(pool["active"] == 0 and pool["queued"] == 0 for pool in summary["pools"]), output
    assert summary["resources"]["end"]["rss_mb"] > 0, output
