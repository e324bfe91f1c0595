"""scripts/loadtest.py runs end to end (briefly) with no error: the whole server under mixed load."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.e2e
def test_loadtest_short_run_has_no_errors() -> None:
    completed = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "loadtest.py"),
            "--clients",
            "8",
            "--duration",
            "6",
            "--media-share",
            "0.2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert " 0 errors" in completed.stdout
