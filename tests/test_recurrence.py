"""How the steps a rank held the others up are spread: a rhythm, a span, or now and then."""

from __future__ import annotations

import numpy as np

from mrcdiag.analyzers.recurrence import step_pattern


def test_a_stall_every_tenth_step_is_periodic_even_with_stray_and_missed_hits() -> None:
    rng = np.random.default_rng(7)
    found = 0
    for _ in range(200):
        stalls = np.arange(5, 80, 10)
        stalls = np.delete(stalls, rng.integers(len(stalls)))  # one stall hidden by noise
        stray = rng.integers(5, 80, 6)  # the shared machine's jitter on this rank
        hits = np.unique(np.concatenate([stalls, stray]))
        costs = np.where(np.isin(hits, stalls), 0.150, rng.uniform(0.005, 0.040, len(hits)))
        found += step_pattern(hits, costs) == {"pattern": "periodic", "every_steps": 10}
    assert found == 200


def test_a_stall_whose_cost_spills_into_the_next_step_keeps_its_period() -> None:
    hits = np.array([s + d for s in range(10, 80, 10) for d in (0, 1)])
    costs = np.tile([0.150, 0.020], 7)
    assert step_pattern(hits, costs) == {"pattern": "periodic", "every_steps": 10}


def test_a_multiple_or_a_divisor_of_the_period_is_not_taken_for_it() -> None:
    assert step_pattern(np.arange(8, 90, 8)) == {"pattern": "periodic", "every_steps": 8}
    assert step_pattern(np.arange(4, 90, 4)) == {"pattern": "periodic", "every_steps": 4}


def test_consecutive_steps_are_a_span() -> None:
    hits = np.array([*range(30, 61), 33])
    assert step_pattern(np.unique(hits)) == {"pattern": "span", "steps": "30-60"}


def test_hits_at_random_steps_rarely_line_up() -> None:
    rng = np.random.default_rng(11)
    periodic = sum(
        step_pattern(np.sort(rng.choice(np.arange(5, 100), 8, replace=False)))["pattern"]
        == "periodic"
        for _ in range(500)
    )
    assert periodic <= 5  # 1% at most


def test_a_span_with_a_stray_hit_before_it_is_the_span() -> None:
    # a rank late by chance once on a shared machine, then lagging from step 150 on
    hits = np.concatenate([[104], np.arange(150, 162)])
    costs = np.concatenate([[0.004], np.full(12, 0.030)])
    assert step_pattern(hits, costs) == {"pattern": "span", "steps": "150-161"}
    # but a rank late now and then is not made a span of its densest stretch
    rng = np.random.default_rng(3)
    for _ in range(100):
        scattered = np.unique(rng.integers(0, 200, 40))
        assert step_pattern(scattered)["pattern"] != "span", scattered
