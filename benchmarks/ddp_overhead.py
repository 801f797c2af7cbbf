"""Step-time overhead of mrcdiag on a 2-rank DDP job: counterbalanced, paired, pooled.

    python benchmarks/ddp_overhead.py [--jobs 4] [--pairs 300] [--batch 128]

Runs benchmarks/ddp_in_job_ab.py under `mrcdiag launch` `--jobs` times, half of them
building the bare model first and half the recorded one, and pools every pair's
difference (recorded step - bare step). Prints the median difference as a share of the
bare step's median, with a 95% interval for that median (order statistics of the pooled
differences), for wall time and for the CPU time of rank 0's process (all its threads).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_job(bare_first: bool, pairs: int, batch: int, nproc: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ab.json"
        cmd = [
            sys.executable, "-m", "mrcdiag.cli", "launch", "--run-dir", f"{tmp}/run",
            "--metrics-port", "0", "--metrics-addr", "127.0.0.1", "--",
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0",
            str(HERE / "ddp_in_job_ab.py"), "--pairs", str(pairs), "--batch", str(batch),
            "--out", str(out),
        ]  # fmt: skip
        if bare_first:
            cmd.append("--bare-first")
        env = dict(os.environ, OMP_NUM_THREADS="1")
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        return json.loads(out.read_text())


def median_with_interval(values: list[float]) -> tuple[float, float, float]:
    """The median and a distribution-free 95% interval for it (binomial order stats)."""
    ordered = sorted(values)
    n = len(ordered)
    half_width = 1.96 * math.sqrt(n) / 2
    low = ordered[max(0, int(math.floor(n / 2 - half_width)))]
    high = ordered[min(n - 1, int(math.ceil(n / 2 + half_width)))]
    return statistics.median(ordered), low, high


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--jobs", type=int, default=4, help="an even number: both orders alike")
    p.add_argument("--pairs", type=int, default=300)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--nproc", type=int, default=2)
    args = p.parse_args()
    results = [run_job(i % 2 == 1, args.pairs, args.batch, args.nproc) for i in range(args.jobs)]
    for key, diff_key, what in (
        ("bare_wall_s", "wall_diff_s", "wall"),
        ("bare_cpu_s", "cpu_diff_s", "CPU of rank 0"),
    ):
        base = statistics.median(v for r in results for v in r[key])
        per_job = [statistics.median(r[diff_key]) / statistics.median(r[key]) for r in results]
        mid, low, high = median_with_interval([v for r in results for v in r[diff_key]])
        print(
            f"batch {args.batch}, {what}: bare step {base * 1e3:.1f} ms, mrcdiag adds "
            f"{mid / base:+.2%} (95% interval {low / base:+.2%} to {high / base:+.2%}; "
            f"per job {', '.join(f'{v:+.2%}' for v in per_job)}; "
            f"{sum(len(r[diff_key]) for r in results)} paired steps)"
        )


if __name__ == "__main__":
    main()
