"""mrcdiag's cost beside the tools people would use instead, on the same DDP job.

    python benchmarks/peers.py [--pairs 8] [--steps 200]
        [--ways aa,mrcdiag,flight_recorder,profiler_window,profiler_full]

Each way of observing the job (benchmarks/peers_job.py: 2 gloo ranks, ~45 ms steps) runs
as its own job, alternated with a bare run of the same job: pair i runs bare first when i
is even, the observed run first when it is odd. Per pair, three ratios observed / bare:
the median step after the first 10 (`step`), the whole loop (`loop`: every step, the
first ones and any trace export inside the loop), and the first 10 steps (`first10`).
Printed: the median of each over the pairs, with their range; `aa` is a bare run against
a bare run, the control that says how far pairs of identical runs differ here.

Ways that take mrcdiag apart, to find where its cost goes:
  ranks_only       the ranks record (the launcher's sitecustomize and env), no agent
  mrcdiag_no_live  `mrcdiag launch --no-live`: the agent samples and serves, no analysis
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BOOT = REPO / "mrcdiag" / "capture" / "_boot"
FIRST = 10


def torchrun(steps: int, *job_args: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0",
        str(HERE / "peers_job.py"), "--steps", str(steps), *job_args,
    ]  # fmt: skip


def launch(tmp: str, *options: str) -> list[str]:
    return [
        sys.executable, "-m", "mrcdiag.cli", "launch", "--run-dir", f"{tmp}/run",
        "--metrics-port", "0", "--metrics-addr", "127.0.0.1", *options, "--",
    ]  # fmt: skip


def command(way: str, steps: int, tmp: str) -> tuple[list[str], dict[str, str]]:
    """The command line and extra environment of one way of running the job."""
    job = torchrun(steps)
    if way in ("bare", "aa"):
        return job, {}
    if way == "mrcdiag":
        return launch(tmp) + job, {}
    if way == "mrcdiag_no_live":
        return launch(tmp, "--no-live") + job, {}
    if way == "ranks_only":
        path = os.pathsep.join([str(BOOT), str(REPO), os.environ.get("PYTHONPATH", "")])
        return job, {"PYTHONPATH": path, "MRCDIAG_RUN_DIR": f"{tmp}/run", "MRCDIAG_JOB": "b"}
    if way == "flight_recorder":
        return job, {"TORCH_FR_BUFFER_SIZE": "2000"}
    if way == "profiler_window":
        return torchrun(steps, "--profile", "window"), {"BENCH_TRACES": f"{tmp}/traces"}
    if way == "profiler_full":
        return torchrun(steps, "--profile", "full"), {"BENCH_TRACES": f"{tmp}/traces"}
    raise SystemExit(f"unknown way {way!r}")


def run(way: str, steps: int) -> list[float]:
    """One job run this way; rank 0's step times in seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd, extra = command(way, steps, tmp)
        out = Path(tmp) / "steps.json"
        env = dict(os.environ, OMP_NUM_THREADS="1", BENCH_OUT=str(out), **extra)
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
        if done.returncode != 0 or not out.exists():
            raise SystemExit(f"{way} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())["step_s"]


def ratios(observed: list[float], bare: list[float]) -> dict[str, float]:
    return {
        "step": statistics.median(observed[FIRST:]) / statistics.median(bare[FIRST:]),
        "loop": sum(observed) / sum(bare),
        "first10": sum(observed[:FIRST]) / sum(bare[:FIRST]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument(
        "--ways", default="aa,mrcdiag,flight_recorder,profiler_window,profiler_full",
        help="comma-separated; see above",
    )  # fmt: skip
    p.add_argument("--json", help="also write every pair's figures here")
    args = p.parse_args()
    ways = args.ways.split(",")
    per_way: dict[str, list[dict[str, float]]] = {w: [] for w in ways}
    bare_step: list[float] = []
    for i in range(args.pairs):
        for way in ways:  # ways interleaved pair by pair, so that drifts touch all alike
            first, second = ("bare", way) if i % 2 == 0 else (way, "bare")
            times = {first: run(first, args.steps)}
            times[second] = run(second, args.steps)
            per_way[way].append(ratios(times[way], times["bare"]))
            bare_step.append(statistics.median(times["bare"][FIRST:]))
            r = per_way[way][-1]
            print(
                f"pair {i + 1} {way}: step {r['step']:.3f} loop {r['loop']:.3f} "
                f"first10 {r['first10']:.3f}",
                file=sys.stderr,
                flush=True,
            )
    print(f"bare step: {statistics.median(bare_step) * 1e3:.1f} ms median, {args.pairs} pairs")
    print("| observed by | step-time ratio (min-max) | whole-loop ratio | first 10 steps |")
    print("|---|---|---|---|")
    for way in ways:
        rows = per_way[way]
        cell = {}
        for key in ("step", "loop", "first10"):
            values = [r[key] for r in rows]
            cell[key] = f"{statistics.median(values):.3f} ({min(values):.2f}-{max(values):.2f})"
        print(f"| {way} | {cell['step']} | {cell['loop']} | {cell['first10']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(per_way, indent=1))


if __name__ == "__main__":
    main()
