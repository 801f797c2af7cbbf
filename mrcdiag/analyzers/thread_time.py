"""Where a late rank's training thread spent its time over the steps it was late, against
its peers over the same steps: on a CPU (its own work), waiting in a run queue for one
(contention), or neither (stopped from outside, asleep). From the step records' own
clocks (capture/thread_clock.py); absent for runs recorded without them."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from mrcdiag.analyzers.lateness import RankStepMatrix
from mrcdiag.analyzers.settings import Settings


@dataclass(frozen=True)
class ThreadTime:
    """Medians per step, seconds."""

    cpu_s: float
    cpu_others_s: float
    wait_s: float
    wait_others_s: float
    # of the wait, the cgroup's CPU limit holding the process (NaN: not known)
    throttled_s: float = float("nan")
    throttled_others_s: float = float("nan")

    @property
    def extra_cpu_s(self) -> float:
        return self.cpu_s - self.cpu_others_s

    @property
    def extra_wait_s(self) -> float:
        return self.wait_s - self.wait_others_s

    @property
    def extra_throttled_s(self) -> float:
        """NaN where the throttling is not known."""
        return self.throttled_s - self.throttled_others_s

    def cause(self, late_s: float, settings: Settings) -> str:
        """What made a thread `late_s` slower than its peers, where its clocks tell:
        more run-queue wait (more than its extra CPU, or more per CPU second, since a
        co-tenant on its core also inflates its CPU time) is "host_contention"; more CPU
        is "slow_compute"; "" where neither explains the lateness. Its cgroup's CPU limit
        is "cpu_throttled" where the limit held the process for most of that extra wait,
        or, where neither explains it, for half the lateness: the thread then waited,
        off the run queue, for its own helper threads or peers that the limit held."""
        contention = self._contention(late_s, settings)
        held = self.extra_throttled_s  # NaN where not known: no comparison holds
        if not held > settings.min_lateness_s:  # held no longer than its peers
            return contention
        if contention == "host_contention" and held >= (
            settings.throttled_share_of_wait_ratio * self.extra_wait_s
        ):
            return "cpu_throttled"
        if not contention and held >= settings.cause_explains_lateness_ratio * max(late_s, 0.0):
            return "cpu_throttled"
        return contention

    def _contention(self, late_s: float, settings: Settings) -> str:
        explains = settings.cause_explains_lateness_ratio * max(late_s, 0.0)
        if self.extra_wait_s >= explains and self.extra_wait_s >= self.extra_cpu_s:
            return "host_contention"
        if self.extra_wait_s >= settings.contention_min_share_of_lateness * max(
            late_s, 0.0
        ) and self.wait_s * self.cpu_others_s >= settings.contention_wait_per_cpu_ratio * (
            self.wait_others_s * self.cpu_s
        ):
            return "host_contention"
        if self.extra_cpu_s >= explains:
            return "slow_compute"
        return ""

    def evidence(self) -> dict[str, float]:
        out = {
            "step_cpu_ms": round(self.cpu_s * 1e3, 3),
            "step_cpu_ms_others": round(self.cpu_others_s * 1e3, 3),
            "step_cpu_wait_ms": round(self.wait_s * 1e3, 3),
            "step_cpu_wait_ms_others": round(self.wait_others_s * 1e3, 3),
        }
        if np.isfinite(self.extra_throttled_s):
            out["step_cpu_throttled_ms"] = round(self.throttled_s * 1e3, 3)
            out["step_cpu_throttled_ms_others"] = round(self.throttled_others_s * 1e3, 3)
        return out


def thread_time(
    m: RankStepMatrix,
    row: int | np.ndarray,
    others: np.ndarray,
    steps: np.ndarray,
    with_previous: bool = False,
) -> ThreadTime | None:
    """`row`'s thread time (or that of the rows `row`, all their steps pooled: a node's
    ranks) against the rows `others` (a boolean mask or indices) over `steps`; None
    where either side was not recorded. With `with_previous`, each of `steps` counts
    together with the step before it (see `cells`): for stalls that come now and then."""
    if m.cpu_s is None or m.cpu_wait_s is None or not len(steps):
        return None
    rows = np.atleast_1d(row)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: None below
        values = [
            float(np.nanmedian(cells(a, rows, steps, with_previous)))
            for a in (m.cpu_s, m.cpu_wait_s)
        ]
        values += [
            float(np.nanmedian(cells(a, others, steps, with_previous)))
            for a in (m.cpu_s, m.cpu_wait_s)
        ]
    if not np.isfinite(values).all():
        return None
    cpu, wait, cpu_others, wait_others = values
    throttled = (np.nan, np.nan)
    if m.cpu_throttled_s is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # not known: NaN, left so
            throttled = (
                float(np.nanmedian(cells(m.cpu_throttled_s, rows, steps, with_previous))),
                float(np.nanmedian(cells(m.cpu_throttled_s, others, steps, with_previous))),
            )
    return ThreadTime(cpu, cpu_others, wait, wait_others, *throttled)


def cells(
    a: np.ndarray, rows: np.ndarray, steps: np.ndarray, with_previous: bool = False
) -> np.ndarray:
    """`a`'s [rows, steps] cells; with `with_previous`, each cell plus the one of the step
    before it. A rank's late work lies between its last collective and the one it comes
    late to, and a step boundary may cut it: a stall after the backward pass of step
    s-1 (an evaluation on rank 0, a checkpoint) makes its peers wait in step s. Where a
    rank is late in a few steps only, the pair holds the whole of each stall; NaN where
    the step before is not recorded."""
    here = a[np.ix_(rows, steps)].astype(np.float64)
    if not with_previous:
        return here
    before = np.asarray(steps) - 1
    known = before >= 0
    out = np.full_like(here, np.nan)
    out[:, known] = here[:, known] + a[np.ix_(rows, before[known])]
    return out
