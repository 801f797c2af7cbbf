"""The life of live findings: when each started, changed severity and ended.

Each live analysis hands over the anomalies it finds in its window; a finding is the
same one from window to window when its kind, ranks and nodes are (its cause and
severity may change as the evidence grows). One that has not been seen for
`end_after_s` has ended. The tracker also decides which transitions reach a person's
terminal: at most one line per finding per `line_every_s`, the rest folded into the
next line that is due.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from mrcdiag.analyzers.findings import Finding, severity_rank

STARTED, CHANGED, ENDED = "start", "change", "end"
# Kinds whose time lost is already the total since they began (a hang's wait, a
# slowdown's excess since its onset); others' is the window's, added up tick by tick.
CUMULATIVE_KINDS = frozenset({"hang", "slowdown"})


def finding_key(f: Finding) -> str:
    """What makes a finding the same one from window to window."""
    ranks = ",".join(map(str, f.ranks))
    nodes = ",".join(f.nodes)
    return f"{f.kind}|{ranks}|{nodes}"


@dataclass(frozen=True)
class LiveFinding:
    key: str
    finding: Finding  # as last seen, step numbers the job's own
    started_unix_s: float
    started_step: int
    last_seen_unix_s: float
    time_lost_total_s: float = 0.0
    ended_unix_s: float | None = None
    ended_step: int | None = None

    @property
    def active(self) -> bool:
        return self.ended_unix_s is None

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "started_unix_s": round(self.started_unix_s, 3),
            "started_step": self.started_step,
            "ended_unix_s": None if self.ended_unix_s is None else round(self.ended_unix_s, 3),
            "ended_step": self.ended_step,
            "time_lost_total_s": round(self.time_lost_total_s, 6),
            "finding": self.finding.as_json(),
        }


@dataclass(frozen=True)
class Transition:
    event: str  # STARTED, CHANGED or ENDED
    live: LiveFinding


class FindingTracker:
    def __init__(self, end_after_s: float, line_every_s: float) -> None:
        self.end_after_s = end_after_s
        self.line_every_s = line_every_s
        self.findings: dict[str, LiveFinding] = {}  # active, and ended not yet dropped
        self._line: dict[str, tuple[float, str, str]] = {}  # key -> (when, event, severity)

    def update(
        self,
        found: list[Finding],
        now_unix_s: float,
        newest_step: int,
        share_of_window: float,
    ) -> list[Transition]:
        """Fold in one analysis: `found` are the window's anomalies worth a warning;
        `share_of_window` is the part of the window that is new since the last one
        (so that each finding's time lost adds up over the run, not window by window)."""
        out: list[Transition] = []
        seen = set()
        for f in found:
            key = finding_key(f)
            seen.add(key)
            old = self.findings.get(key)
            cumulative = f.kind in CUMULATIVE_KINDS
            lost = f.time_lost_s if cumulative else f.time_lost_s * share_of_window
            if old is None or not old.active:
                live = LiveFinding(
                    key=key,
                    finding=f,
                    started_unix_s=now_unix_s,
                    started_step=_onset_step(f, newest_step),
                    last_seen_unix_s=now_unix_s,
                    time_lost_total_s=(old.time_lost_total_s if old else 0.0)
                    + (f.time_lost_s if old is None else lost),
                )
                self.findings[key] = live
                out.append(Transition(STARTED, live))
                continue
            total = (
                max(old.time_lost_total_s, f.time_lost_s)
                if cumulative
                else old.time_lost_total_s + lost
            )
            live = replace(old, finding=f, last_seen_unix_s=now_unix_s, time_lost_total_s=total)
            onset = f.evidence.get("start_step")
            moved = isinstance(onset, int) and onset != old.started_step
            if moved:  # its evidence now places its start better
                live = replace(live, started_step=int(onset))
            self.findings[key] = live
            if f.severity != old.finding.severity or f.cause != old.finding.cause or moved:
                out.append(Transition(CHANGED, live))
        for key, live in list(self.findings.items()):
            if key in seen or not live.active:
                continue
            if now_unix_s - live.last_seen_unix_s >= self.end_after_s:
                ended = replace(live, ended_unix_s=now_unix_s, ended_step=newest_step)
                self.findings[key] = ended
                out.append(Transition(ENDED, ended))
        return out

    def end_all(self, now_unix_s: float, newest_step: int) -> list[Transition]:
        """The job ended: so did every finding still active."""
        out = []
        for key, live in list(self.findings.items()):
            if live.active:
                ended = replace(live, ended_unix_s=now_unix_s, ended_step=newest_step)
                self.findings[key] = ended
                out.append(Transition(ENDED, ended))
        return out

    def drop_ended(self, older_than_unix_s: float) -> None:
        """Forget findings that ended before this (their series leave /metrics)."""
        for key, live in list(self.findings.items()):
            if not live.active and (live.ended_unix_s or 0) < older_than_unix_s:
                del self.findings[key]

    def lines_due(self, now_unix_s: float) -> list[Transition]:
        """The transitions a person should read now: a finding's first line at once,
        later ones (a severity change, the end) once `line_every_s` has passed since its
        last line, and only if its state differs from what that line said."""
        out = []
        for key, live in self.findings.items():
            state = (ENDED, "") if not live.active else ("live", live.finding.severity)
            last = self._line.get(key)
            if last is None:
                if not live.active:
                    continue  # started and ended between two lines: never shown
                event = STARTED
            else:
                when, said_event, said_severity = last
                said = (ENDED, "") if said_event == ENDED else ("live", said_severity)
                if said == state or now_unix_s - when < self.line_every_s:
                    continue
                event = ENDED if not live.active else (STARTED if said_event == ENDED else CHANGED)
            self._line[key] = (now_unix_s, event, live.finding.severity)
            out.append(Transition(event, live))
        return out


_STEP_IN_TEXT = re.compile(r"\b(steps?) (\d+)(?:-(\d+))?")


def shift_steps(f: Finding, first_step: int) -> Finding:
    """A finding of a window whose steps were numbered from 0, in the job's own step
    numbers: the summary's "step N"/"steps N-M" and the evidence's step fields."""
    if not first_step:
        return f

    def text(match: re.Match) -> str:
        word, a, b = match.group(1), int(match.group(2)), match.group(3)
        tail = f"-{int(b) + first_step}" if b is not None else ""
        return f"{word} {a + first_step}{tail}"

    def value(key: str, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: value(k, x) for k, x in v.items()}
        if key in ("start_step", "first_step", "last_step") and isinstance(v, int):
            return v + first_step
        if key in ("steps", "straggling_steps") and isinstance(v, str):
            return _STEP_IN_TEXT.sub(text, f"steps {v}").removeprefix("steps ")
        return v

    return replace(
        f,
        summary=_STEP_IN_TEXT.sub(text, f.summary),
        evidence={k: value(k, v) for k, v in f.evidence.items()},
    )


def _onset_step(f: Finding, newest_step: int) -> int:
    """Where the finding's evidence says it began, else the newest step."""
    ev = f.evidence
    for key in ("start_step", "first_step"):
        if isinstance(ev.get(key), int):
            return int(ev[key])
    pattern = ev.get("pattern") if isinstance(ev.get("pattern"), dict) else {}
    for text in (ev.get("straggling_steps"), pattern.get("steps")):
        first = re.match(r"\d+", text) if isinstance(text, str) else None
        if first:
            return int(first.group(0))
    return newest_step


def worth_a_line(f: Finding) -> bool:
    """Live, only anomalies that warn are followed: an info finding is not one to go and
    see, and efficiency statements describe the workload, not a fault."""
    return f.is_anomaly and severity_rank(f.severity) >= severity_rank("warning")
