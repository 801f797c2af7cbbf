"""What changed between a good run and a slow one of the same job."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mrcdiag.analyzers.findings import Finding

if TYPE_CHECKING:
    from mrcdiag.analyzers import Analysis

WORSE = 2.0  # a finding present in both runs is worse when it now costs this much more


@dataclass(frozen=True)
class Change:
    baseline: float | None
    current: float | None

    @property
    def ratio(self) -> float | None:
        if self.current is None or self.baseline is None or self.baseline == 0:
            return None
        return self.current / self.baseline


@dataclass(frozen=True)
class OpChange:
    op: str
    group: str
    group_size: int
    busbw_gbps: Change
    time_per_rank_s: Change


@dataclass(frozen=True)
class Comparison:
    baseline_run_dirs: tuple[str, ...]
    step_time_p50_s: Change
    comm_fraction: Change
    data_wait_fraction: Change
    per_op: tuple[OpChange, ...]
    new_findings: tuple[Finding, ...]  # anomalies of the current run not in the baseline
    worse_findings: tuple[tuple[Finding, float], ...]  # (now, time lost in the baseline)
    gone_findings: tuple[Finding, ...]  # anomalies of the baseline no longer there

    def as_json(self) -> dict[str, Any]:
        def change(c: Change, with_ratio: bool = False) -> dict[str, Any]:
            out = {"baseline": c.baseline, "current": c.current}
            return {**out, "ratio": c.ratio} if with_ratio else out

        return {
            "baseline_run_dirs": list(self.baseline_run_dirs),
            "step_time_p50_s": change(self.step_time_p50_s, with_ratio=True),
            "comm_fraction": change(self.comm_fraction),
            "data_wait_fraction": change(self.data_wait_fraction),
            "per_op": [
                {
                    "op": o.op,
                    "group": o.group,
                    "group_size": o.group_size,
                    "busbw_gbps": change(o.busbw_gbps),
                    "busbw_ratio": o.busbw_gbps.ratio,
                    "time_per_rank_s": change(o.time_per_rank_s),
                }
                for o in self.per_op
            ],
            "new_findings": [f.as_json() for f in self.new_findings],
            "worse_findings": [
                {**f.as_json(), "baseline_time_lost_s": lost} for f, lost in self.worse_findings
            ],
            "gone_findings": [f.as_json() for f in self.gone_findings],
        }


def compare(current: Analysis, baseline: Analysis) -> Comparison:
    """Compare the current run with a good run of the same job."""
    cur, base = current.summary, baseline.summary
    base_ops = {(o.op, o.group): o for o in base.per_op}
    ops = []
    for o in cur.per_op:
        b = base_ops.get((o.op, o.group))
        ops.append(
            OpChange(
                o.op,
                o.group,
                o.group_size,
                Change(b.busbw_median_gbps if b else None, o.busbw_median_gbps),
                Change(b.time_total_s if b else None, o.time_total_s),
            )
        )
    key = lambda f: (f.kind, f.cause, f.ranks, f.nodes)  # noqa: E731
    base_keys = {key(f) for f in baseline.findings if f.severity != "info"}
    cur_keys = {key(f) for f in current.findings if f.severity != "info"}
    base_lost = {key(f): f.time_lost_s for f in baseline.findings}
    serious = [f for f in current.findings if f.severity != "info"]
    return Comparison(
        baseline_run_dirs=tuple(str(d) for d in baseline.run.run_dirs),
        step_time_p50_s=Change(base.step_time_p50_s, cur.step_time_p50_s),
        comm_fraction=Change(base.comm_fraction, cur.comm_fraction),
        data_wait_fraction=Change(base.data_wait_fraction, cur.data_wait_fraction),
        per_op=tuple(ops),
        new_findings=tuple(f for f in serious if key(f) not in base_keys),
        worse_findings=tuple(
            (f, base_lost[key(f)])
            for f in serious
            if key(f) in base_keys and f.time_lost_s >= WORSE * max(base_lost[key(f)], 1e-9)
        ),
        gone_findings=tuple(
            f for f in baseline.findings if f.severity != "info" and key(f) not in cur_keys
        ),
    )
