"""The record every analyzer returns: one cause, where, and what it cost."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SEVERITIES = ("info", "warning", "critical")
KINDS = ("straggler", "slowdown", "idle_compute", "interconnect", "hang")


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

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ranks"] = list(self.ranks)
        out["nodes"] = list(self.nodes)
        out["time_lost_s"] = round(float(self.time_lost_s), 6)
        return out


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else 0


def sort_findings(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (-f.time_lost_s, -severity_rank(f.severity)))
