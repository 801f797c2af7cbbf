"""One module per question; `analyze` runs them all on one run."""

from __future__ import annotations

from dataclasses import dataclass

from mrcdiag.analyzers.findings import Finding, sort_findings
from mrcdiag.analyzers.hangs import find_hangs
from mrcdiag.analyzers.instances import Instances, collective_instances
from mrcdiag.analyzers.summary import Summary, summarize
from mrcdiag.store.reader import RunData


@dataclass
class Analysis:
    run: RunData
    instances: Instances
    summary: Summary
    findings: list[Finding]


def analyze(run: RunData) -> Analysis:
    instances = collective_instances(run)
    summary = summarize(run, instances)
    findings: list[Finding] = []
    findings += find_hangs(run)
    return Analysis(run, instances, summary, sort_findings(findings))
