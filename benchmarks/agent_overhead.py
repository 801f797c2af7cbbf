"""Node agent cost: CPU per sample with 8 (fake) GPUs, host and rank collectors, the
time to serve one scrape of /metrics, and the CPU of the thread that watches 8 ranks'
processes for stops (collectors/stops.py), on 8 real processes.

    python benchmarks/agent_overhead.py [--samples 200] [--scrapes 200] [--watch-s 10]

The NVML library is the fake from tests/fakes (no GPU here); everything above it is the
real agent. CPU is process time (user+system) of the sampling thread's work divided by
the number of samples; at a 1 s interval, CPU% of one core = that time / 1 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fakes.fake_pynvml import FakeGpu, make_fake_nvml  # noqa: E402

from mrcdiag.agent.node import NodeAgent  # noqa: E402
from mrcdiag.collectors import nvml  # noqa: E402
from mrcdiag.collectors.host import HostCollector  # noqa: E402
from mrcdiag.store.synthetic import SyntheticSpec, write_synthetic_run  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--scrapes", type=int, default=200)
    p.add_argument("--watch-s", type=float, default=10.0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = write_synthetic_run(
            Path(tmp) / "run", SyntheticSpec(ranks=8, steps=500, ranks_per_host=8)
        )
        common = {"job": "bench", "node": "node-0000"}
        agent = NodeAgent(
            run_dir,
            0,
            interval_s=3600,
            job="bench",
            addr="127.0.0.1",
            node="node-0000",
            collectors=[],
        )
        collectors = [
            HostCollector(common, agent.ranks.rank_processes),
            nvml.create(
                common,
                agent.ranks.rank_processes,
                nvml=make_fake_nvml([FakeGpu() for _ in range(8)]),
            ),
        ]
        for c in collectors:
            agent.registry.register(c)
        agent.collectors = collectors
        url = agent.start()
        agent.sample_once()
        t0 = time.process_time()
        for _ in range(args.samples):
            agent.sample_once()
        cpu_per_sample = (time.process_time() - t0) / args.samples
        scrape_ms = []
        for _ in range(args.scrapes):
            s = time.perf_counter()
            with urllib.request.urlopen(url) as r:
                body = r.read()
            scrape_ms.append((time.perf_counter() - s) * 1e3)
        agent.stop()
    print(
        f"CPU per sample (8 fake GPUs, host, 8 ranks): {cpu_per_sample * 1e3:.2f} ms "
        f"= {cpu_per_sample * 100:.2f}% of one core at a 1 s interval"
    )
    print(
        f"scrape: median {statistics.median(scrape_ms):.2f} ms, "
        f"p90 {sorted(scrape_ms)[int(0.9 * len(scrape_ms))]:.2f} ms, {len(body)} bytes"
    )
    share = stop_watch_cpu_share(8, args.watch_s)
    print(f"stop watch, 8 ranks: {share * 100:.2f}% of one core over {args.watch_s:.0f} s")


def stop_watch_cpu_share(n_ranks: int, seconds: float) -> float:
    """The process's CPU per wall second while a StopWatch reads `n_ranks` processes (the
    main thread sleeps meanwhile)."""
    import subprocess

    from mrcdiag.collectors.stops import StopWatch

    ranks = [subprocess.Popen(["sleep", str(seconds + 30)]) for _ in range(n_ranks)]
    try:
        watch = StopWatch().start()
        watch.watch([r.pid for r in ranks])
        cpu0, wall0 = time.process_time(), time.monotonic()
        time.sleep(seconds)
        share = (time.process_time() - cpu0) / (time.monotonic() - wall0)
        watch.stop()
        return share
    finally:
        for r in ranks:
            r.kill()
            r.wait()


if __name__ == "__main__":
    main()
