"""The job's pace, followed online: a job-wide slowdown found in the live window, then
held after the window has slid past its onset, and followed while it changes.

Each tick the post-run test (analyzers/slowdown.find_slowdowns: the best split of the
job's step times, 15% and beyond the noise, on every rank) runs over the window. A
slowdown it finds is held as a *stage*: its onset, the pace before and after. A held
stage

- is placed better while it is young (more steps after the change);
- deepens when the window finds a further slowdown from the held pace on (a shared
  machine's pace drifts by a fifth, then a fault makes it four times slower): the
  deeper stage becomes the finding, so that its onset, pace and severity are those of
  the change that matters now, and the stages before it stay in its evidence;
- ends when the pace is back within half the smallest shift of the pace before it,
  returning to the stage below while the pace is still beyond that one's.

A slowdown's time lost is the job's excess over its pace before the first stage, from
that stage's onset: what the job would have saved had none of them happened.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from mrcdiag.agent.tracker import shift_steps
from mrcdiag.analyzers.findings import Finding
from mrcdiag.analyzers.settings import Settings
from mrcdiag.analyzers.slowdown import find_slowdowns, slowdown_severity
from mrcdiag.store.window import Window

# The steps at the end of a window whose pace says whether a slowdown is still on
RECENT_PACE_STEPS = 10


def _onset(f: Finding) -> int:
    return int(f.evidence["start_step"])


def _ms(f: Finding, field: str) -> float:
    return float(f.evidence.get(field, 0.0))


class PaceFollower:
    """The job's step times, one per step of the job, and the slowdown held on them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.step_s: list[float] = []  # the job's step time per step (NaN unknown)
        self.stages: list[Finding] = []  # held slowdowns, the first found first
        self._earliest = 0  # the newest stage's onset when found: never placed earlier
        # a stage found after the pace came back must begin after that: the window still
        # holds the change that just ended
        self._not_before = 0

    def update(
        self, m: Any, w: Window, job_in_window: np.ndarray, settings: Settings
    ) -> list[Finding]:
        """Fold in the window's job step times (`job_in_window`, one per window column)
        and return the slowdown on now, if any. `m` is the window's RankStepMatrix,
        `settings` the window's (its warm-up counted from the window's first step)."""
        for col, value in enumerate(job_in_window):
            step = w.first_step + col
            if step >= len(self.step_s):
                self.step_s.extend([np.nan] * (step + 1 - len(self.step_s)))
            self.step_s[step] = float(value)
        x = np.array(self.step_s)
        recent_s = float(np.nanmedian(x[-RECENT_PACE_STEPS:])) if len(x) else np.nan
        while self.stages and recent_s < self._back_s(self.stages[-1]):
            self.stages.pop()  # the pace came back from this stage
            self._earliest = _onset(self.stages[-1]) if self.stages else 0
            self._not_before = len(x)
        found = find_slowdowns(m, settings)
        if not self.stages:
            first = self._followed(found, w)
            if first is None:
                return []
            self.stages = [first]
            self._earliest = _onset(first)
            return [self._now(x)]
        held = self.stages[-1]
        young = len(x) - _onset(held) <= self.settings.live_window_steps // 2
        if young and found:  # more steps after it place its start better
            placed = shift_steps(found[0], w.first_step)
            if _onset(placed) >= self._earliest and self._same_stage(placed):
                self.stages[-1] = placed
        elif not young:
            deeper = self._followed(found, w)
            if deeper is not None and self._deepens(held, deeper):
                self.stages.append(deeper)
                self._earliest = _onset(deeper)
        return [self._now(x)]

    def _followed(self, found: list[Finding], w: Window) -> Finding | None:
        """The window's slowdown (`found`, in window steps), if it has held long enough
        to be followed: live, the change must have held for twice the post-run's
        shortest side (the newest steps of a window are where a shared machine's
        hiccups sit); in the job's steps."""
        if not found or _onset(found[0]) + w.first_step < self._not_before:
            return None
        if w.complete_steps - _onset(found[0]) < 2 * self.settings.slowdown_min_side_steps:
            return None
        return shift_steps(found[0], w.first_step)

    def _deepens(self, held: Finding, deeper: Finding) -> bool:
        """Whether `deeper` is a further slowdown from the held stage's pace: after its
        onset, and slower than the held pace by the smallest slowdown."""
        return _onset(deeper) > _onset(held) and _ms(deeper, "step_time_after_ms") >= (
            _ms(held, "step_time_after_ms") * self.settings.slowdown_min_ratio
        )

    def _same_stage(self, placed: Finding) -> bool:
        """A young stage's new placement, not the stage below it found again."""
        if len(self.stages) < 2:
            return True
        return _onset(placed) > _onset(self.stages[-2])

    def _back_s(self, stage: Finding) -> float:
        before_s = _ms(stage, "step_time_before_ms") / 1e3
        return before_s * (1 + (self.settings.slowdown_min_ratio - 1) / 2)

    def _now(self, x: np.ndarray) -> Finding:
        """The newest stage, with its time lost grown to the present (against the pace
        before the first stage) and the stages below it in its evidence."""
        first, held = self.stages[0], self.stages[-1]
        baseline_s = _ms(first, "step_time_before_ms") / 1e3
        lost = float(np.nansum(np.maximum(x[_onset(first) :] - baseline_s, 0)))
        now_ms = float(np.nanmedian(x[-RECENT_PACE_STEPS:])) * 1e3
        evidence: dict[str, Any] = {**held.evidence, "step_time_now_ms": round(now_ms, 3)}
        if len(self.stages) > 1:
            evidence["earlier_stages"] = [
                {
                    k: s.evidence[k]
                    for k in ("start_step", "step_time_before_ms", "step_time_after_ms")
                }
                for s in self.stages[:-1]
            ]
        ratio = _ms(held, "step_time_after_ms") / 1e3 / baseline_s if baseline_s > 0 else 1.0
        severity = slowdown_severity(ratio, lost, self.settings)
        return replace(held, time_lost_s=lost, evidence=evidence, severity=severity)
