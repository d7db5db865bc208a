"""The CLI in a real process, as an operator runs it."""

from __future__ import annotations

import os
import subprocess
import sys


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ALICODE_")}
    return subprocess.run(
        [sys.executable, "-m", "alicode_gw", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
