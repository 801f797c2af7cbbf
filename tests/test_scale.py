"""1024 ranks x 2000 steps in the real on-disk format, read as `mrcdiag report` reads
them (the steps into their grid): the one slow rank, and no ghosts."""

from __future__ import annotations

from pathlib import Path

import pytest

from mrcdiag.analyzers import analyze
from mrcdiag.store.reader import read_run
from mrcdiag.store.synthetic import SyntheticSpec, write_synthetic_run

pytestmark = pytest.mark.slow

SPEC = SyntheticSpec(ranks=1024, steps=2000, ranks_per_host=8)


def test_one_rank_five_percent_slower_is_found_alone(tmp_path: Path) -> None:
    spec = SyntheticSpec(**{**SPEC.__dict__, "slow_ranks": (613,), "slow_factor": 1.05})
    analysis = analyze(read_run(write_synthetic_run(tmp_path / "run", spec), step_grid=True))
    serious = [(f.kind, f.ranks) for f in analysis.findings if f.severity != "info"]
    assert serious == [("straggler", (613,))]


@pytest.mark.parametrize("seed", range(20))
def test_no_slow_rank_gives_no_straggler(tmp_path: Path, seed: int) -> None:
    spec = SyntheticSpec(**{**SPEC.__dict__, "seed": seed})
    analysis = analyze(read_run(write_synthetic_run(tmp_path / "run", spec), step_grid=True))
    assert [f for f in analysis.findings if f.kind == "straggler"] == []
    assert [f for f in analysis.findings if f.severity != "info"] == []
