"""One module per question; `analyze` runs them all on one run."""

from __future__ import annotations

from dataclasses import dataclass

from mrcdiag.analyzers.fabric import find_fabric_causes
from mrcdiag.analyzers.findings import Finding, sort_findings
from mrcdiag.analyzers.hangs import find_hangs
from mrcdiag.analyzers.idle import find_idle
from mrcdiag.analyzers.instances import Instances, collective_instances
from mrcdiag.analyzers.interconnect import find_interconnect
from mrcdiag.analyzers.lateness import RankStepMatrix, rank_step_matrix
from mrcdiag.analyzers.link_rates import find_degraded_links
from mrcdiag.analyzers.pseudo_steps import with_pseudo_steps
from mrcdiag.analyzers.slowdown import find_slowdowns
from mrcdiag.analyzers.stragglers import find_stragglers
from mrcdiag.analyzers.summary import Summary, summarize
from mrcdiag.store.reader import RunData


@dataclass
class Analysis:
    run: RunData
    instances: Instances
    summary: Summary
    matrix: RankStepMatrix
    findings: list[Finding]


def analyze(run: RunData, expected_busbw_gbps: float | None = None) -> Analysis:
    run = with_pseudo_steps(run)
    instances = collective_instances(run)
    matrix = rank_step_matrix(run, instances)
    summary = summarize(run, instances, matrix)
    findings: list[Finding] = []
    findings += find_hangs(run)
    stragglers = find_stragglers(run, instances, matrix)
    findings += stragglers
    findings += find_slowdowns(matrix)
    explained = any(f.severity != "info" for f in stragglers)
    findings += find_idle(run, matrix, explained)
    findings += find_interconnect(run, instances, matrix, expected_busbw_gbps)
    findings += find_fabric_causes(run, matrix)
    findings += find_degraded_links(run, instances)
    return Analysis(run, instances, summary, matrix, sort_findings(findings))
