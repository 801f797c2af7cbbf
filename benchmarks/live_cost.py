"""What the live analysis costs: CPU beside a real 8-rank job, and one window at scale.

    python benchmarks/live_cost.py job [--nproc 8] [--steps 1500] [--repeat 3]
    python benchmarks/live_cost.py window [--ranks 4096] [--repeat 5]

`job` runs a DDP demo job under `mrcdiag launch` (the live analysis on, every 2 s, in
the launcher's process) and reads the analysis's own CPU seconds from /metrics at the
end (mrcdiag_live_analysis_seconds_total, thread CPU time of its ticks) against the
job's wall time: the share of one core it took. `window` writes a synthetic run of
`--ranks` ranks x `--steps` steps (one all-reduce a step, one rank 20% slow) and times
what one tick does with a window of Settings.live_window_steps steps: fold the records
in, build the window, analyse it; the first tick (which reads every file) apart.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def job(args: argparse.Namespace) -> None:
    shares = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [
                sys.executable, "-m", "mrcdiag.cli", "launch", "--run-dir", f"{tmp}/run",
                "--metrics-port", "0", "--metrics-addr", "127.0.0.1", "--",
                sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                str(args.nproc), "-m", "mrcdiag.demo_job", "--steps", str(args.steps),
                "--work-ms", str(args.work_ms),
            ]  # fmt: skip
            proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=REPO)
            url: list[str] = []
            cpu = [0.0]

            def read(proc: subprocess.Popen = proc, url: list[str] = url) -> None:
                assert proc.stderr is not None
                for line in proc.stderr:
                    found = re.search(r"metrics at (http://\S+)", line)
                    if found:
                        url.append(found.group(1))

            threading.Thread(target=read, daemon=True).start()
            t0 = time.perf_counter()
            while proc.poll() is None:  # the last figure the agent served
                if url:
                    try:
                        text = urllib.request.urlopen(url[0], timeout=2).read().decode()
                        m = re.search(r"^mrcdiag_live_analysis_seconds_total (\S+)", text, re.M)
                        if m:
                            cpu[0] = float(m.group(1))
                    except OSError:
                        pass
                time.sleep(0.5)
            wall = time.perf_counter() - t0
            shares.append(cpu[0] / wall)
            print(f"  {args.nproc} ranks, {wall:.1f} s: live analysis {cpu[0]:.2f} s CPU "
                  f"= {100 * cpu[0] / wall:.2f}% of a core")  # fmt: skip
    print(f"live analysis beside {args.nproc} ranks: median {100 * statistics.median(shares):.2f}% "
          f"of one core over {args.repeat} runs")  # fmt: skip


def window(args: argparse.Namespace) -> None:
    from mrcdiag.agent.live import LiveAnalysis
    from mrcdiag.store.synthetic import SyntheticSpec, write_synthetic_run
    from mrcdiag.store.window import DirTail, RankDelta

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = write_synthetic_run(
            Path(tmp) / "run",
            SyntheticSpec(
                ranks=args.ranks, steps=args.steps, slow_ranks=(args.ranks // 3,), slow_factor=1.2
            ),
        )
        t0 = time.perf_counter()
        deltas = DirTail(run_dir).read_new()
        read_s = time.perf_counter() - t0
        empty: list[RankDelta] = []
        feed = [deltas]
        live = LiveAnalysis(lambda: feed.pop() if feed else empty, clock=lambda: 1e12)
        t0 = time.perf_counter()
        live.tick()
        first_s = time.perf_counter() - t0
        times = []
        for _ in range(args.repeat):  # a tick over the same window, as when steps are slow
            t0 = time.perf_counter()
            live.tick()
            times.append(time.perf_counter() - t0)
        found = [
            f"{x.finding.kind}/{x.finding.cause} ranks {x.finding.ranks}" for x in live.active()
        ]
        print(f"{args.ranks} ranks x {args.steps} steps: reading every file {read_s:.2f} s; "
              f"first tick {first_s:.2f} s; a tick over a {live.settings.live_window_steps}-step "
              f"window: median {statistics.median(times):.3f} s "
              f"({', '.join(f'{t:.3f}' for t in times)}); found: {found}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="what", required=True)
    j = sub.add_parser("job")
    j.add_argument("--nproc", type=int, default=8)
    j.add_argument("--steps", type=int, default=600)
    j.add_argument("--work-ms", type=float, default=20.0)
    j.add_argument("--repeat", type=int, default=3)
    w = sub.add_parser("window")
    w.add_argument("--ranks", type=int, default=4096)
    w.add_argument("--steps", type=int, default=60)
    w.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    (job if args.what == "job" else window)(args)


if __name__ == "__main__":
    main()
