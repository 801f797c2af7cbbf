"""How the steps in which a rank held the others up are spread over the run: every N
steps (a checkpoint, a log flush, garbage collection every N), one span, or now and then.

Pure: step numbers and what each cost in, a description out."""

from __future__ import annotations

import numpy as np

from mrcdiag.analyzers.common import binomial_tail

# A pattern is periodic when the on-phase steps hold this share of the cost, ...
PERIODIC_COST_SHARE = 0.7
# ... this share of the on-phase steps between the first and last hit are hits ...
PERIODIC_OCCUPANCY = 0.6
# ... and it happened at least this many times.
PERIODIC_MIN_EVENTS = 3
# ... and that many hits on one phase of that period by chance is this unlikely.
PERIODIC_CHANCE = 0.01
# Hits filling this share of their range are one span, not a rhythm.
SPAN_DENSITY = 0.6
# ... and, with stray hits far from it left out, this share.
STRAY_SPAN_DENSITY = 0.8


def step_pattern(hits: np.ndarray, costs: np.ndarray | None = None) -> dict[str, object]:
    """`hits`: sorted step numbers; `costs`: what each cost (weights; equal if None).

    Every candidate period is tried at its best phase. The period kept is the one whose
    phase holds most of the cost while its on-phase steps are mostly hits: stray hits
    (a stall's cost spilling into the next step, the shared machine's jitter), a missed
    occurrence or a multiple of the period do not move it. Hits scattered at random must
    not line up: the rhythm found must be far beyond chance."""
    hits = np.asarray(hits, dtype=np.int64)
    if len(hits) == 0:
        return {"pattern": "intermittent", "steps_held_up": 0}
    weights = np.ones(len(hits)) if costs is None else np.maximum(np.asarray(costs), 0) + 1e-12
    first, last = int(hits[0]), int(hits[-1])
    length = last - first + 1
    if len(hits) >= SPAN_DENSITY * length:
        return {"pattern": "span", "steps": f"{first}-{last}"}
    span = _span_among_stray_hits(hits, weights)
    if span is not None:
        return {"pattern": "span", "steps": f"{span[0]}-{span[1]}"}
    best: tuple[float, int] | None = None
    hit_set = set(hits.tolist())
    for period in range(2, length // 2 + 1):
        by_phase = np.bincount(hits % period, weights=weights, minlength=period)
        phase = int(np.argmax(by_phase))
        on = hits % period == phase
        if on.sum() < PERIODIC_MIN_EVENTS or by_phase[phase] < PERIODIC_COST_SHARE * weights.sum():
            continue
        slots = range(first + (phase - first) % period, last + 1, period)
        occupancy = sum(s in hit_set for s in slots) / max(len(slots), 1)
        if occupancy < PERIODIC_OCCUPANCY:
            continue
        if _chance(len(hits), int(on.sum()), period) > PERIODIC_CHANCE:
            continue
        score = float(weights[on].sum() / weights.sum()) * occupancy
        if best is None or score > best[0] + 1e-9:
            best = (score, period)
    if best is not None:
        return {"pattern": "periodic", "every_steps": best[1]}
    return {"pattern": "intermittent", "steps_held_up": int(len(hits))}


def _span_among_stray_hits(hits: np.ndarray, weights: np.ndarray) -> tuple[int, int] | None:
    """One span in which the rank held the others up in nearly every step, holding most
    of the cost, with stray hits far before or after it (the shared machine's jitter on
    this rank before it began to lag): that span. Only hits at the ends are left out, at
    most the cost share a periodic rhythm may leave, each at least the span's length
    away from it (hits close by are part of the pattern, not strays)."""
    n = len(hits)
    share = np.concatenate([[0.0], np.cumsum(weights)]) / weights.sum()
    best: tuple[int, int, int] | None = None  # (hits inside, first index, last index)
    for k in range(n):
        if share[k] > 1 - PERIODIC_COST_SHARE:
            break
        ends = np.arange(k + PERIODIC_MIN_EVENTS - 1, n)  # index of the span's last hit
        if len(ends) == 0:
            break
        inside = ends - k + 1
        length = hits[ends] - hits[k] + 1
        dense = inside >= STRAY_SPAN_DENSITY * length
        held = share[ends + 1] - share[k] >= PERIODIC_COST_SHARE
        gap_before = hits[k] - hits[k - 1] if k > 0 else np.iinfo(np.int64).max
        after = np.minimum(ends + 1, n - 1)
        gap_after = np.where(ends + 1 < n, hits[after] - hits[ends], np.iinfo(np.int64).max)
        apart = (gap_before > length) & (gap_after > length)
        ok = np.flatnonzero(dense & held & apart)
        if len(ok) and (best is None or inside[ok[-1]] > best[0]):
            best = (int(inside[ok[-1]]), k, int(ends[ok[-1]]))
    if best is None or best[0] == n:
        return None
    return int(hits[best[1]]), int(hits[best[2]])


def _chance(n: int, k: int, period: int) -> float:
    """How likely `k` or more of `n` hits at random steps fall on one phase of `period`
    (a union bound over the phases)."""
    return min(1.0, period * binomial_tail(n, k, 1.0 / period))
