"""Process-level boundaries that import-linter cannot see: what the API process loads."""

from __future__ import annotations

import subprocess
import sys


def test_cli_entry_point_and_api_load_without_torch() -> None:
    # `pqz api` imports the CLI (whose error handling knows compression's error types) and the
    # app; neither may pull in torch.
    code = "import sys, cli.main, app.main; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"
