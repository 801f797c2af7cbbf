"""`mrcdiag report` on bad input: one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import mrcdiag

from mrcdiag.store.synthetic import SyntheticSpec, write_synthetic_run


@pytest.fixture
def small_run(tmp_path: Path) -> Path:
    return write_synthetic_run(tmp_path / "run", SyntheticSpec(ranks=4, steps=40, ranks_per_host=2))


def _one_line_error(proc) -> str:
    assert proc.returncode not in (0, 3), proc.stdout
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_missing_directory(tmp_path: Path) -> None:
    line = _one_line_error(mrcdiag("report", str(tmp_path / "nope")))
    assert "does not exist" in line


def test_empty_directory(tmp_path: Path) -> None:
    line = _one_line_error(mrcdiag("report", str(tmp_path)))
    assert "not an mrcdiag run directory" in line


def test_garbage_run_json(small_run: Path) -> None:
    (small_run / "run.json").write_text("{not json")
    line = _one_line_error(mrcdiag("report", str(small_run)))
    assert "run.json is not valid JSON" in line


def test_unknown_format_is_a_usage_error(small_run: Path) -> None:
    proc = mrcdiag("report", str(small_run), "--format", "pdf")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "'pdf' is not one of" in proc.stderr


def test_truncated_segment_reports_what_was_readable(small_run: Path) -> None:
    segment = small_run / "ranks" / "rank-00002" / "collectives.arrows"
    data = segment.read_bytes()
    segment.write_bytes(data[: len(data) - 300])  # tear the last batch
    proc = mrcdiag("report", str(small_run), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert any("rank-00002" in p and "truncated" in p for p in report["problems"])
    assert report["run"]["world_size"] == 4


def test_rank_whose_files_are_gone_is_named(small_run: Path) -> None:
    for f in (small_run / "ranks" / "rank-00003").iterdir():
        f.unlink()
    (small_run / "ranks" / "rank-00003").rmdir()
    proc = mrcdiag("report", str(small_run))
    assert proc.returncode == 0, proc.stderr
    assert "no data from rank(s) 3 of 4" in proc.stdout


def test_unwritable_output(small_run: Path, tmp_path: Path) -> None:
    line = _one_line_error(
        mrcdiag("report", str(small_run), "-o", str(tmp_path / "missing" / "r.txt"))
    )
    assert "cannot write" in line


def test_fail_on_warning_exits_3_when_a_rank_straggles(tmp_path: Path) -> None:
    slow = write_synthetic_run(
        tmp_path / "slow", SyntheticSpec(ranks=4, steps=60, slow_ranks=(1,), slow_factor=1.3)
    )
    proc = mrcdiag("report", str(slow), "--fail-on", "warning")
    assert proc.returncode == 3 and "straggler" in proc.stdout
    assert mrcdiag("report", str(slow), "--fail-on", "critical").returncode in (0, 3)


def test_fail_on_warning_exits_0_on_a_clean_run(small_run: Path) -> None:
    assert mrcdiag("report", str(small_run), "--fail-on", "warning").returncode == 0


def test_expected_bus_bandwidth_far_above_reality_is_a_finding(small_run: Path) -> None:
    proc = mrcdiag("report", str(small_run), "--format", "json", "--expected-busbw", "10000")
    causes = {f["cause"] for f in json.loads(proc.stdout)["findings"]}
    assert "low_bus_bandwidth" in causes
