"""The CLI in a real process, as an operator runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m alicode_gw ARGS`` with no ``ALICODE_*`` but ``env``'s, in ``cwd``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ALICODE_")}
    return subprocess.run(
        [sys.executable, "-m", "alicode_gw", *args],
        env={**base, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
