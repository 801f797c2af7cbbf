"""The JSON report: the contract of DESIGN.md, for pipelines and for other tools."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from mrcdiag.analyzers import Analysis
from mrcdiag.analyzers.compare import Comparison

JSON_SCHEMA_VERSION = 1


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else round(value, 6)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _clean(value.item())
    return value


def _row(record: Any) -> dict[str, Any]:
    """A flat dataclass as a dict: asdict copies every value deeply, a second per
    8,000 rows at 4096 ranks; nested values are still copied (and cleaned by _clean)."""
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


def report_dict(analysis: Analysis, diff: Comparison | None = None) -> dict[str, Any]:
    run, summary = analysis.run, analysis.summary
    out = _clean(
        {
            "schema": JSON_SCHEMA_VERSION,
            "run": {
                "run_dir": str(run.run_dirs[0]) if len(run.run_dirs) == 1 else None,
                "run_dirs": [str(d) for d in run.run_dirs],
                "job": run.run.job if run.run else None,
                "world_size": run.world_size,
                "nodes": run.hosts,
                "steps": summary.steps,
                "duration_s": summary.duration_s,
                "start": run.run.start if run.run else None,
                "command": list(run.run.command) if run.run else None,
                "dropped_records": sum(i.dropped_records for i in run.ranks.values()),
                "clock_uncertainty_s": _clock_uncertainty_s(run),
            },
            "summary": {
                "step_time_s": {"p50": summary.step_time_p50_s, "p90": summary.step_time_p90_s},
                "comm_fraction": summary.comm_fraction,
                "data_wait_fraction": summary.data_wait_fraction,
                "gpu_utilization": None,
                "per_rank": [_row(r) for r in summary.per_rank],
                "per_op": [_row(o) for o in summary.per_op],
                "per_peer": [_row(p) for p in summary.per_peer],
                "time_split": [_row(r) for r in summary.time_split],
                "capture": dataclasses.asdict(summary.coverage),
            },
            "findings": [f.as_json() for f in analysis.findings],
            "stack_groups": analysis.stack_groups,
            "problems": list(analysis.notes),
        }
    )
    if diff is not None:
        out["compare"] = _clean(diff.as_json())
    return out


def _clock_uncertainty_s(run: Any) -> float | None:
    values = [i.clock_uncertainty_ns for i in run.ranks.values() if i.clock_uncertainty_ns]
    return max(values) / 1e9 if values else None


def render_json(analysis: Analysis, diff: Comparison | None = None) -> str:
    return json.dumps(report_dict(analysis, diff), indent=2) + "\n"
