"""The README's main job: the deployment-pipeline example runs and finishes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parent.parent / "examples" / "deploy_pipeline.py"


def test_the_deploy_pipeline_example_completes_every_application() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    summary = [line for line in result.stdout.splitlines() if "applies," in line]
    assert len(summary) == 3
    assert all("completed" in line for line in summary)
    assert "crash" in result.stdout
