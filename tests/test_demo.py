"""`mrcdiag demo`, the first command of the README, ends with a report naming rank 1."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import mrcdiag, report_json, tenant_explains

pytestmark = pytest.mark.slow


def test_demo_records_and_names_the_slow_rank(tmp_path: Path) -> None:
    proc = mrcdiag("demo", "--steps", "40", "--run-dir", str(tmp_path / "demo"), timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "demo" / "run.json").exists()
    assert "straggler · cause " in proc.stdout and " · rank 1 " in proc.stdout
    (straggler,) = [
        f
        for f in report_json(tmp_path / "demo")["findings"]
        if f["kind"] == "straggler" and f["severity"] != "info"
    ]
    # Its extra compute, or, where it shared its core with another process, the wait for
    # a CPU its own thread's clocks show (the demo's work is wall time: see burn_cpu)
    assert straggler["ranks"] == [1], straggler
    assert straggler["cause"] == "slow_compute" or tenant_explains(straggler), straggler
