"""What each piece of the hook's CUDA path costs on the host, on a real GPU.

    python benchmarks/cuda_hot_path.py

The per-collective difference that benchmarks/gpu_overhead.py reports, taken apart:
torch's stream and event calls, the device timer's start and finish, the argument
reader, the wrapper around a no-op collective, and a real 1-rank NCCL all_reduce bare
and recorded. Medians of 5 loops of 20000 calls, in us.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torch.distributed as dist

import mrcdiag
from mrcdiag.capture import install, lifecycle, ops, wrappers
from mrcdiag.capture.device_timer import DeviceTimer

clock = time.perf_counter_ns


def per_call(fn: Callable[[], object], n: int = 20000, loops: int = 5) -> float:
    out = []
    for _ in range(loops):
        t0 = clock()
        for _ in range(n):
            fn()
        out.append((clock() - t0) / n / 1e3)
        torch.cuda.synchronize()
    return round(statistics.median(out), 3)


def timer_pair(timer: DeviceTimer) -> Callable[[], None]:
    row = tuple(range(12))

    def start_and_finish() -> None:
        event = timer.start(0)
        timer.finish(row, event, 0)
        if len(timer.queued) > 1000:
            torch.cuda.synchronize()
            timer.resolve([])

    return start_and_finish


def main() -> None:
    torch.cuda.set_device(0)
    t = torch.ones(1024, device="cuda")
    event = torch.cuda.Event(enable_timing=True)
    stream = torch.cuda.current_stream(0)
    raw = torch._C._cuda_getCurrentRawStream
    read = ops.CALL_READERS["all_reduce"]
    costs = {
        "torch.cuda.current_stream(0)": per_call(lambda: torch.cuda.current_stream(0)),
        "torch._C._cuda_getCurrentRawStream(0)": per_call(lambda: raw(0)),
        "Event.record(stream)": per_call(lambda: event.record(stream)),
        "torch.cuda.Event(enable_timing=True)": per_call(
            lambda: torch.cuda.Event(enable_timing=True), n=2000
        ),
        "Event.query()": per_call(event.query),
        "timer start+finish, current_stream() each": per_call(timer_pair(DeviceTimer(torch.cuda))),
        "timer start+finish, Stream kept by raw handle": per_call(
            timer_pair(DeviceTimer(torch.cuda, raw))
        ),
        "argument reader, all_reduce of a CUDA tensor": per_call(lambda: read((t,), {})),
    }
    install.install(torch)
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("nccl", init_method=f"file://{tmp}/store", rank=0, world_size=1)
        assert mrcdiag.attach(run_dir=f"{tmp}/run", job="bench")
        stub = wrappers.wrap_collective("all_reduce", lambda *a, **k: None)
        bare = dist.all_reduce.__mrcdiag_wrapped__
        costs["wrapper around a no-op, CUDA tensor"] = per_call(lambda: stub(t))
        costs["NCCL all_reduce, bare"] = per_call(lambda: bare(t))
        costs["NCCL all_reduce, recorded"] = per_call(lambda: dist.all_reduce(t))
        lifecycle.detach()
        dist.destroy_process_group()
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    for what, us in costs.items():
        print(f"{us:8.3f} us  {what}")


if __name__ == "__main__":
    main()
