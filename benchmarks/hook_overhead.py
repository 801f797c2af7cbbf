"""Host-side cost of the hook per collective, and step-time overhead on a DDP job.

    python benchmarks/hook_overhead.py [--calls 20000] [--rounds 7] [--ddp-pairs 5]

1. Per collective: one process, a gloo group of size 1, all_reduce of a small tensor,
   timed in alternating blocks with the hook recording and with the original function.
   The difference of the medians is what the hook adds to each call.
   Also the wrapper alone around a no-op, in a tight loop and between small matrix
   products (compute between collectives leaves the interpreter's caches cold).
2. Step time: a 2-rank DDP job run bare and under `mrcdiag launch`, alternated; each run
   times its own steps (median after warm-up); reported as instrumented / bare. Also
   the CPU time rank 0's process spends per step (all its threads), which the other
   tenants of a shared machine move far less than wall time: on 2 shared cores the wall
   ratio of one session can differ from the next by more than the 2% being measured;
   benchmarks/ddp_overhead.py measures the same inside one job, step by step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def per_call(calls: int, rounds: int) -> tuple[float, float, float, float]:
    import torch
    import torch.distributed as dist
    from alternating_blocks import alternate_calls

    from mrcdiag.capture import install, lifecycle, wrappers

    install.install(torch)
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=0, world_size=1)
        import mrcdiag

        assert mrcdiag.attach(run_dir=f"{tmp}/run", job="bench")
        wrapped = dist.all_reduce
        t = torch.ones(4)
        bare_us, hooked_us = alternate_calls(wrapped.__mrcdiag_wrapped__, wrapped, t, calls, rounds)
        clock = time.perf_counter_ns
        # The wrapper alone, around a collective that does nothing: its own cost, in a
        # tight loop (warm caches), and between small matrix products, as in a real step
        # where compute runs between collectives and evicts the interpreter's caches.
        nothing = lambda *a, **k: None  # noqa: E731
        stub = wrappers.wrap_collective("all_reduce", nothing)
        t0 = clock()
        for _ in range(calls):
            stub(t)
        stub_us = (clock() - t0) / calls / 1e3
        x = torch.randn(64, 64)
        blocks: dict[str, list[float]] = {"nothing": [], "stub": []}
        for _ in range(rounds * 10):
            for name, fn in (("nothing", nothing), ("stub", stub)):
                t0 = clock()
                for _ in range(200):
                    fn(t)
                    x @ x
                blocks[name].append((clock() - t0) / 200 / 1e3)
        between_us = statistics.median(blocks["stub"]) - statistics.median(blocks["nothing"])
        lifecycle.detach()
        dist.destroy_process_group()
    return bare_us, hooked_us, stub_us, between_us


def ddp_step_ms(instrumented: bool, steps: int, nproc: int) -> dict[str, float]:
    job = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "127.0.0.1:0",
        str(HERE / "ddp_job.py"),
        "--steps",
        str(steps),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "step.txt"
        env = dict(os.environ, OMP_NUM_THREADS="1", BENCH_OUT=str(out))
        cmd = job
        if instrumented:
            cmd = [
                sys.executable,
                "-m",
                "mrcdiag.cli",
                "launch",
                "--run-dir",
                f"{tmp}/run",
                "--metrics-port",
                "0",
                "--metrics-addr",
                "127.0.0.1",
                "--",
                *job,
            ]
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--ddp-pairs", type=int, default=5)
    p.add_argument("--ddp-steps", type=int, default=150)
    p.add_argument(
        "--ddp-nproc",
        type=int,
        default=2,
        help="ranks of the DDP job; 1 leaves a core free for the agent and the writer "
        "thread, as a GPU node has host cores to spare",
    )
    args = p.parse_args()
    bare, hooked, stub, between = per_call(args.calls, args.rounds)
    print(f"wrapper alone (recording, around a no-op collective): {stub:.2f} us per call")
    print(f"same, each call after a 64x64 matrix product: {between:.2f} us per call")
    print(
        f"all_reduce on a 1-rank gloo group, alternated call by call: bare {bare:.2f} us, "
        f"hooked {hooked:.2f} us, difference {hooked - bare:.2f} us "
        f"(medians of {args.rounds * args.calls // 2} calls each)"
    )
    if args.ddp_pairs == 0:
        return
    bare, inst = [], []
    for _ in range(args.ddp_pairs):
        bare.append(ddp_step_ms(False, args.ddp_steps, args.ddp_nproc))
        inst.append(ddp_step_ms(True, args.ddp_steps, args.ddp_nproc))
    for key, what in (("wall_ms", "step time"), ("cpu_ms", "CPU time of rank 0 per step")):
        b = statistics.median(r[key] for r in bare)
        i = statistics.median(r[key] for r in inst)
        print(
            f"DDP {what}, {args.ddp_nproc} rank(s): bare {b:.2f} ms, instrumented {i:.2f} ms, "
            f"ratio {i / b:.3f} (medians of {args.ddp_pairs} alternated runs; "
            f"bare {[round(r[key], 1) for r in bare]}, inst {[round(r[key], 1) for r in inst]})"
        )


if __name__ == "__main__":
    main()
