"""PyTorch's flight recorder, read: the first collective the ranks did not issue alike."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from conftest import demo_job, job_env, launch, mrcdiag, report_json

from mrcdiag.analyzers.flight import find_flight_divergence
from mrcdiag.store.flight_recorder import (
    FlightRecorderError,
    read_dump_dir,
    read_flight_recorder,
)


def _entry(seq: int, op: str, group: str = "0", sizes=((4,),), created_ns: int = 0) -> dict:
    return {
        "profiling_name": f"nccl:{op}",
        "process_group": [group, "default_pg" if group == "0" else f"pg{group}"],
        "collective_seq_id": seq,
        "p2p_seq_id": 0,
        "is_p2p": False,
        "state": "completed",
        "input_sizes": [list(s) for s in sizes],
        "input_dtypes": ["Float"],
        "time_created_ns": created_ns or seq * 1000,
    }


def _write(path: Path, entries: list[dict], as_pickle: bool = False) -> None:
    data = {"version": "2.10", "pg_config": {}, "entries": entries}
    path.write_bytes(pickle.dumps(data) if as_pickle else json.dumps(data).encode())


@pytest.mark.slow
def test_a_rank_that_skipped_a_collective_is_named_from_a_real_gloo_jobs_dumps(
    run_dir: Path, tmp_path: Path
) -> None:
    dumps = tmp_path / "fr"
    job = launch(
        run_dir, 3,
        demo_job("--steps", "20", "--work-ms", "5", "--skip-log-rank", "1", "--skip-at-step",
                 "8", "--pg-timeout-s", "5", "--fr-dump-dir", str(dumps)),
        env=job_env(TORCH_FR_BUFFER_SIZE="2000"),
    )  # fmt: skip
    assert job.returncode != 0, job.stderr  # every rank's collective timed out
    assert sorted(p.name for p in dumps.iterdir()) == [f"trace_rank_{r}" for r in range(3)]
    # the truth, from rank 0's own dump: the ninth all_gather of a scalar (the logged
    # loss; mrcdiag's own clock alignment gathers vectors) is step 8's
    gathers = sorted(
        e.collective_seq
        for e in read_flight_recorder(dumps / "trace_rank_0").entries
        if e.op == "all_gather" and e.input_sizes == "[[]]"
    )
    report = report_json(run_dir, extra=["--flight-recorder", str(dumps)])
    (mismatch,) = [f for f in report["findings"] if f["cause"] == "collective_mismatch"]
    assert mismatch["ranks"] == [1] and mismatch["severity"] == "critical", mismatch
    assert mismatch["evidence"]["seq"] == gathers[8], (mismatch, gathers)
    issued = mismatch["evidence"]["issued_by_rank"]
    assert issued["0"].startswith("all_gather") and issued["2"] == issued["0"]
    assert issued["1"].startswith("all_reduce"), issued  # it went on into DDP's buckets
    (ended,) = [f for f in report["findings"] if f["cause"] == "job_failed"]
    assert "Timed out" in ended["summary"], ended


def test_the_first_group_to_diverge_is_named_and_the_later_ones_listed(tmp_path: Path) -> None:
    # ranks 0-3: tensor-parallel pairs (groups 1, 2) inside one data-parallel group (0);
    # rank 3 skips its tp collective #5, and then the dp group stalls at #3
    for rank in range(4):
        tp = "1" if rank < 2 else "2"
        tp_ops = [_entry(s, "all_reduce", tp) for s in range(1, 8)]
        if rank == 3:
            tp_ops = [e for e in tp_ops if e["collective_seq_id"] != 5]
            tp_ops += [_entry(5, "all_gather", tp, created_ns=5000)]
        dp_ops = [_entry(s, "all_reduce", "0", sizes=((1024,),), created_ns=3000 * s + 1)
                  for s in range(1, 4 if rank != 3 else 3)]  # fmt: skip
        _write(tmp_path / f"nccl_trace_rank_{rank}", tp_ops + dp_ops, as_pickle=rank % 2 == 0)
    problems: list[str] = []
    dumps = read_dump_dir(tmp_path, problems)
    assert sorted(dumps) == [0, 1, 2, 3] and not problems
    (finding,) = find_flight_divergence(dumps)
    assert finding.ranks == (3,) and finding.evidence["group"] == "2"
    assert finding.evidence["seq"] == 5
    assert finding.evidence["diverged_after"] == ["group 0 at #3"]
    assert finding.evidence["last_completed_by_rank"] == {"2": 7, "3": 7}  # NCCL's states
    assert "rank 3 issued all_gather" in finding.summary


def test_a_clean_jobs_dumps_and_a_ring_buffer_that_dropped_the_oldest_say_nothing(
    tmp_path: Path,
) -> None:
    for rank, first in enumerate((1, 40)):  # rank 1's buffer kept only the last entries
        _write(tmp_path / f"trace_{rank}", [_entry(s, "all_reduce") for s in range(first, 60)])
    assert find_flight_divergence(read_dump_dir(tmp_path, [])) == []


def test_bad_dumps_get_one_line_and_the_readable_ones_are_kept(tmp_path: Path) -> None:
    _write(tmp_path / "trace_0", [_entry(1, "all_reduce")])
    (tmp_path / "trace_1").write_bytes(b"\x80\x04garbage")
    # a pickle that asks for an object: refused, never run
    (tmp_path / "trace_2").write_bytes(pickle.dumps({"entries": [Path("/")]}))
    (tmp_path / "trace_3").write_text("{}")
    problems: list[str] = []
    dumps = read_dump_dir(tmp_path, problems)
    assert sorted(dumps) == [0]
    assert len(problems) == 3 and all("\n" not in p for p in problems), problems
    assert any("refused to build" in p for p in problems), problems
    assert any("no 'entries' list" in p for p in problems), problems
    with pytest.raises(FlightRecorderError, match="not a directory"):
        read_dump_dir(tmp_path / "trace_0", [])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FlightRecorderError, match="no flight recorder dumps"):
        read_dump_dir(empty, [])


def test_report_says_in_one_line_when_the_flight_recorder_dir_is_wrong(tmp_path: Path) -> None:
    result = mrcdiag("report", str(tmp_path), "--flight-recorder", str(tmp_path / "nowhere"))
    assert result.returncode != 0 and "Traceback" not in result.stderr
