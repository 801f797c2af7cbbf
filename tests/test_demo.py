"""`mrcdiag demo`, the first command of the README, ends with a report naming rank 1."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import mrcdiag

pytestmark = pytest.mark.slow


def test_demo_records_and_names_the_slow_rank(tmp_path: Path) -> None:
    proc = mrcdiag("demo", "--steps", "40", "--run-dir", str(tmp_path / "demo"), timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "straggler · cause slow_compute · rank 1" in proc.stdout
    assert (tmp_path / "demo" / "run.json").exists()
