"""The capture check (`launch --verify-capture`) as lines for a terminal."""

from __future__ import annotations

from pathlib import Path

from mrcdiag.analyzers.capture_check import CaptureCheck, check_capture
from mrcdiag.analyzers.summary import Coverage
from mrcdiag.store.flight_recorder import read_run_dumps
from mrcdiag.store.reader import RunDirError, read_run

# The exit code of `launch --verify-capture` when the job succeeded and the counts differ.
EXIT_CAPTURE_MISMATCH = 3


def verify_run(run_dir: Path) -> tuple[bool, list[str]]:
    """Our records of a run against the flight recorder dumps in it: (ok, lines)."""
    problems: list[str] = []
    try:
        run = read_run(run_dir)
    except RunDirError as exc:
        return False, [f"capture check not possible: {exc}"]
    check = check_capture(run, read_run_dumps(run_dir, problems))
    return check.ok, render_check(check) + [f"  note: {p}" for p in problems]


def _ranks(ranks: list[int]) -> str:
    return ",".join(str(r) for r in ranks)


def render_check(check: CaptureCheck) -> list[str]:
    """The check as lines for a terminal."""
    if not check.ranks_compared:
        return ["capture check: no flight recorder dump to compare with", *check.notes]
    head = (
        f"capture check: {check.collectives_compared} collectives in PyTorch's flight "
        f"recorder on rank(s) {_ranks(list(check.ranks_compared))}"
    )
    if check.ok:
        lines = [head + ": every one recorded by mrcdiag"]
    else:
        lines = [head + f"; {len(check.differences)} count(s) differ:"]
        lines += [
            f"  rank {d.rank} group {d.group} {d.family}: mrcdiag {d.recorded}, "
            f"flight recorder {d.flight_recorder}"
            for d in check.differences
        ]
    return lines + [f"  note: {n}" for n in check.notes]


def capture_line(c: Coverage) -> str:
    """What was recorded, by who issued it: one line under the tables."""
    sources = ", ".join(f"{n} {name}" for name, n in c.by_source.items() if n)
    parts = [f"Captured: {sources or 'no collectives'}", f"{c.point_to_point} point-to-point"]
    if c.incomplete:
        parts.append(f"{c.incomplete} never completed (closed at detach)")
    parts.append(f"{c.dropped} dropped")
    return " · ".join(parts)
