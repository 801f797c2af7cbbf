"""The record every analyzer returns: one cause, where, and what it cost."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

SEVERITIES = ("info", "warning", "critical")
KINDS = ("straggler", "slowdown", "idle_compute", "interconnect", "hang")

# Two kinds of statement. An anomaly: something deviates from its peers or from its own
# past (a straggling rank or node, a slowdown, a hang, a slow link, a throttled GPU, a
# bandwidth below what the user said to expect). Efficiency: the shape of a healthy
# workload (communication nothing overlaps, waiting with no one to blame, idle GPUs, a
# job-wide data wait). Only anomalies may warn; efficiency is told in "Where the time
# goes" and judged against an expectation only when the user gives one.
CATEGORIES = ("anomaly", "efficiency")
EFFICIENCY_CAUSES = frozenset(
    {
        ("interconnect", "exposed_communication"),
        ("interconnect", "no_p2p"),
        ("idle_compute", "waiting_on_collectives"),
        ("idle_compute", "data_loading"),
        ("idle_compute", "job_stalls"),
        ("idle_compute", "low_gpu_utilization"),
    }
)


@dataclass(frozen=True)
class Finding:
    kind: str
    severity: str
    cause: str
    time_lost_s: float
    ranks: tuple[int, ...] = ()
    nodes: tuple[str, ...] = ()
    summary: str = ""  # one sentence a person reads first
    evidence: dict[str, Any] = field(default_factory=dict)
    recommendation: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.severity not in SEVERITIES:
            raise ValueError(f"a finding of kind {self.kind!r}, severity {self.severity!r}")
        if self.category == "efficiency" and self.severity != "info":
            raise ValueError(
                f"{self.kind}/{self.cause} describes the workload's shape: info, not "
                f"{self.severity}, unless measured against an expectation the user gave"
            )

    @property
    def category(self) -> str:
        """ "anomaly" or "efficiency" (see CATEGORIES)."""
        return "efficiency" if (self.kind, self.cause) in EFFICIENCY_CAUSES else "anomaly"

    @property
    def is_anomaly(self) -> bool:
        return self.category == "anomaly"

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["evidence"] = _plain(out["evidence"])
        out["category"] = self.category
        out["ranks"] = list(self.ranks)
        out["nodes"] = list(self.nodes)
        out["time_lost_s"] = round(float(self.time_lost_s), 6)
        return out


def _plain(value: Any) -> Any:
    """Evidence as JSON can hold it: numpy's numbers (a float32 read from a matrix) as
    Python's, in dicts and lists alike."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, str):
        return value.item()
    return value


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else 0


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Anomalies first, then by cost and severity: a reference to "the straggler" in an
    efficiency finding always points at one printed before it."""
    return sorted(
        findings,
        key=lambda f: (not f.is_anomaly, -f.time_lost_s, -severity_rank(f.severity)),
    )


def with_first_seen_live(
    findings: list[Finding], live_lines: list[dict[str, Any]]
) -> list[Finding]:
    """Each finding with when the live analysis first saw it (findings.jsonl): the
    earliest start of a live finding of the same kind that blamed the same ranks (or
    nodes), as its first piece of evidence: "step 812, 2026-11-26 04:26:06 UTC, warning"."""
    starts = [x for x in live_lines if x.get("event") == "start" and isinstance(x, dict)]
    out = []
    for f in findings:
        first = None
        for line in starts:
            live = line.get("finding") or {}
            if live.get("kind") != f.kind:
                continue
            same = (
                tuple(live.get("ranks") or ()) == f.ranks
                if f.ranks
                else tuple(live.get("nodes") or ()) == f.nodes
            )
            if not same:
                continue
            if first is None or line.get("started_unix_s", 0) < first.get("started_unix_s", 0):
                first = line
        if first is None:
            out.append(f)
            continue
        when = datetime.fromtimestamp(float(first.get("started_unix_s") or 0), timezone.utc)
        severity = (first.get("finding") or {}).get("severity")
        seen = f"step {first.get('started_step')}, {when:%Y-%m-%d %H:%M:%S} UTC, {severity}"
        out.append(replace(f, evidence={"first_seen_live": seen, **f.evidence}))
    return out
