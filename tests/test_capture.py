"""The hook on real torchrun jobs: what it records, and that the job never notices."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import demo_job, launch, report_json, script

from mrcdiag.store.reader import read_run
from mrcdiag.store.schema import DTYPES, OPS, SOURCES

pytestmark = pytest.mark.slow

# (op, group index, seq, bytes, dtype, async) for rank 1 of known_sequence.py on 3 ranks.
WORLD = 3
EXPECTED_COLLECTIVES = [
    ("all_reduce", 0, 1, 4000, "float32", False),
    ("all_gather", 0, 2, 1000 * WORLD, "float32", False),
    ("all_gather_into_tensor", 0, 3, 400 * WORLD, "float32", False),
    ("reduce_scatter", 0, 4, 200 * WORLD, "float32", False),
    ("reduce_scatter_tensor", 0, 5, 256 * WORLD, "float32", False),
    ("broadcast", 0, 6, 80, "float64", False),
    ("reduce", 0, 7, 80, "float32", False),
    ("all_to_all_single", 0, 8, 32 * WORLD, "float32", False),
    ("gather", 0, 9, 20 * WORLD, "float32", False),
    ("scatter", 0, 10, 28 * WORLD, "float32", False),
    ("all_gather_single", 0, 11, 12 * WORLD, "float32", False),
    ("reduce_scatter_single", 0, 12, 36 * WORLD, "float32", False),
    ("all_reduce_coalesced", 0, 13, 40, "float32", False),
    ("barrier", 0, 14, 0, "unknown", False),
    ("all_reduce", 0, 15, 240, "int64", True),
    ("all_reduce", 0, 16, 160, "float32", True),  # functional collective
]


def test_every_op_is_recorded_with_bytes_group_and_sequence(run_dir: Path) -> None:
    result = launch(run_dir, WORLD, script("known_sequence.py"))
    assert result.returncode == 0, result.stderr
    run = read_run(run_dir)
    assert run.problems == []
    assert sorted(run.ranks) == [0, 1, 2]
    c = run.collectives
    for rank in range(WORLD):
        mine = c.where(c["rank"] == rank)
        assert (mine["t_end_ns"] >= mine["t_arrive_ns"]).all()
        assert (mine["t_end_ns"] > 0).all(), "every op here completes, async ones included"
        world = [
            (OPS[o], int(g), int(s), int(b), DTYPES[d], bool(a))
            for o, g, s, b, d, a in zip(
                mine["op"],
                mine["group"],
                mine["seq"],
                mine["nbytes"],
                mine["dtype"],
                mine["is_async"],
                strict=True,
            )
            if g == 0 and OPS[o] not in ("send", "recv", "isend", "irecv", "batch_isend_irecv")
        ]
        assert world == EXPECTED_COLLECTIVES, f"rank {rank}"
        sources = Counter(SOURCES[s] for s in mine["source"])
        assert sources["functional"] == 1
        sub = [
            (OPS[o], int(s), int(b))
            for o, g, s, b in zip(
                mine["op"], mine["group"], mine["seq"], mine["nbytes"], strict=True
            )
            if g == 1
        ]
        assert sub == ([("all_reduce", 1, 64), ("all_reduce", 2, 64)] if rank in (0, 1) else [])
        p2p = [
            (OPS[o], int(p), int(b))
            for o, p, b in zip(mine["op"], mine["peer"], mine["nbytes"], strict=True)
            if p >= 0
        ]
        nxt, prv = (rank + 1) % WORLD, (rank - 1) % WORLD
        first = [("send", nxt, 48), ("recv", prv, 48)]
        if rank % 2:
            first.reverse()
        assert p2p[:2] == first
        # async ones are written as they complete; a batch is one row per operation
        assert sorted(p2p[2:]) == sorted(
            [("isend", nxt, 24), ("irecv", prv, 24), ("isend", nxt, 20), ("irecv", prv, 20)]
        )
    sub_group = run.groups[1]
    assert sub_group.ranks == (0, 1)


def test_ddp_gradient_allreduces_are_recorded_and_user_hook_still_runs(run_dir: Path) -> None:
    marker = run_dir.parent / "hook-calls"
    result = launch(run_dir, 2, script("ddp_user_hook.py", str(marker), "--steps", "6"))
    assert result.returncode == 0, result.stderr
    meta = json.loads((run_dir.parent / "hook-calls.rank0.json").read_text())
    run = read_run(run_dir)
    c = run.collectives
    mine_ddp = c.where((c["rank"] == 0) & (c["source"] == SOURCES.index("ddp")))
    is_grad = mine_ddp["op"] == OPS.index("all_reduce")
    ddp = mine_ddp.where(is_grad)
    # DDP's own C++ collectives are DDP's too: the parameter-shape check, the start-up
    # broadcast of parameters, the broadcasts of the bucket rebuild after the first step
    own = [OPS[o] for o in mine_ddp.where(~is_grad)["op"]]
    assert own[0] == "all_gather" and own.count("broadcast") >= 2, own
    # the user's hook ran once per bucket per step, and each call was recorded with the
    # bucket's size (DDP rebuilds its buckets after the first step, so counts differ)
    assert meta["calls"] == len(ddp) > 6
    assert meta["first_step_buckets"] >= 1
    # in the order the hook was called: records are written as they complete, and two
    # buckets may complete in the other order
    issued = np.argsort(ddp["t_arrive_ns"], kind="stable")
    assert [int(b) for b in ddp["nbytes"][issued]] == meta["bucket_bytes"]
    per_step = Counter()
    for step, nbytes in zip(ddp["step"], ddp["nbytes"], strict=True):
        per_step[int(step)] += int(nbytes)
    assert set(per_step.values()) == {meta["param_bytes"]}
    assert len(per_step) == 6
    assert ddp["is_async"].all() and (ddp["t_end_ns"] > ddp["t_arrive_ns"]).all()


def test_rank_that_sleeps_before_a_collective_arrives_last(run_dir: Path) -> None:
    delay_s = 0.3
    result = launch(
        run_dir,
        3,
        script("late_rank.py", "--late-rank", "2", "--delay", str(delay_s), "--rounds", "5"),
    )
    assert result.returncode == 0, result.stderr
    from mrcdiag.analyzers.instances import collective_instances

    run = read_run(run_dir)
    inst = collective_instances(run)
    late = inst.nbytes == 4096  # the instances the script delays (other sizes are not)
    assert late.sum() == 5
    assert (inst.last_rank[late] == 2).all()
    rec = inst.records
    for rank in (0, 1):
        waits = inst.wait_ns[(rec["rank"] == rank) & late[rec["instance"]]] / 1e9
        # Tolerance: the gap between the sleeping rank's wake-up and the others' arrival
        # includes the previous collective's skew (< 20 ms on a loaded 2-core box) and the
        # clock-offset error, which is 0 here (one machine, one CLOCK_MONOTONIC).
        assert np.all(np.abs(waits - delay_s) < 0.08), waits
    own = inst.wait_ns[(rec["rank"] == 2) & late[rec["instance"]]]
    assert (own == 0).all()


def test_killed_rank_leaves_a_readable_run_that_names_it(run_dir: Path) -> None:
    result = launch(
        run_dir,
        3,
        demo_job("--steps", "400", "--work-ms", "20", "--die-rank", "1", "--die-at-step", "60"),
        timeout=180,
    )
    assert result.returncode != 0
    report = report_json(run_dir)
    hangs = [f for f in report["findings"] if f["kind"] == "hang"]
    assert hangs and hangs[0]["ranks"] == [1] and hangs[0]["cause"] == "missing_rank"
    run = read_run(run_dir)
    assert not run.ranks[1].closed_cleanly
    steps = run.steps
    last_step = steps["step"][steps["rank"] == 1].max()
    assert last_step < 60
    step_s = np.median((steps["t_end_ns"] - steps["t_start_ns"])[steps["rank"] == 0]) / 1e9
    lost_s = (59 - last_step) * step_s
    # "about one second": the writer flushes every 0.5 s; a loaded 2-core box adds jitter
    assert lost_s <= 1.5, f"lost {lost_s:.2f} s of rank 1's records"


def test_ddp_gradients_are_averaged_exactly_as_without_mrcdiag(run_dir: Path) -> None:
    result = launch(run_dir, 3, script("ddp_grads_match.py"))
    assert result.returncode == 0, result.stderr
    run = read_run(run_dir)
    ddp = run.collectives["source"] == SOURCES.index("ddp")
    assert ddp.sum() >= 3 * 3  # every rank, every step: recorded
