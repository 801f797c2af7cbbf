"""Report time and peak memory on a synthetic 1024-rank x 2000-step run (one rank 5% slow).

    python benchmarks/report_scale.py [--ranks 1024] [--steps 2000] [--repeat 3]
    python benchmarks/report_scale.py --ranks 16384 --repeat 2 --run-dir /tmp/r16384

Each measurement runs `mrcdiag report --format json` in a fresh process, so the figure
includes start-up and reading the run directory; peak memory is that process's max RSS.
The run is one DDP all-reduce a step on every rank, with the stepping thread's CPU and
run-queue clocks and DataLoader wait of a healthy host (store/synthetic.py), 8 ranks a
node. `--run-dir` keeps the run there (written when the directory does not hold one
yet): 16384 ranks take a minute and 7 GB to write.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mrcdiag.store import layout
from mrcdiag.store.synthetic import SyntheticSpec, write_synthetic_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ranks", type=int, default=1024)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--format", default="json", choices=["json", "html", "text"])
    p.add_argument("--run-dir", type=Path, help="keep the run here (reused when it is there)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run_dir or Path(tmp) / "run"
        if not (run_dir / "run.json").exists():
            write_synthetic_run(
                run_dir,
                SyntheticSpec(ranks=args.ranks, steps=args.steps, slow_ranks=(args.ranks // 3,)),
            )
        size_mb = sum(f.stat().st_size for f in run_dir.rglob("*") if f.is_file()) / 1e6
        times, peaks = [], []
        for _ in range(args.repeat):
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            t0 = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "mrcdiag.cli",
                    "report",
                    str(run_dir),
                    "--format",
                    args.format,
                    "-o",
                    str(Path(tmp) / "report.out"),
                ],
                check=True,
                capture_output=True,
            )
            times.append(time.perf_counter() - t0)
            peaks.append(max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
        ranks = len(layout.rank_dirs(run_dir))  # a kept run may not be --ranks
        print(f"run: {ranks} ranks x {args.steps} steps, {size_mb:.0f} MB on disk")
        print(
            f"report time: median {statistics.median(times):.2f} s over {args.repeat} runs "
            f"({', '.join(f'{t:.2f}' for t in times)})"
        )
        print(f"peak memory: {max(peaks) / 1024:.0f} MiB")
        print(f"{args.format} report: {(Path(tmp) / 'report.out').stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
