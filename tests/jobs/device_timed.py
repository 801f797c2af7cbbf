"""Collectives on (fake) CUDA tensors under the real hook, recorder and writer thread.

The collective itself is a stand-in for NCCL's (it only queues); the CUDA boundary is
tests/fakes/fake_cuda.py, whose stream runs DELAY_MS behind the host. Prints the host
times at which each call was made, as JSON, for the test to compare with the run.

    python device_timed.py RUN_DIR [ok|fail]
"""

import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fakes"))
import fake_cuda  # noqa: E402

import mrcdiag  # noqa: E402
from mrcdiag.capture import recorder as recorder_module  # noqa: E402
from mrcdiag.capture import wrappers  # noqa: E402
from mrcdiag.capture.device_timer import DeviceTimer  # noqa: E402

DELAY_MS = 250.0


class QueuedWork:
    """An async NCCL work: its future completes when the test says so."""

    def __init__(self) -> None:
        self.future = torch.futures.Future()

    def get_future(self) -> torch.futures.Future:
        return self.future


def main() -> None:
    run_dir, mode = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo", init_method=f"file://{run_dir}.store", rank=0, world_size=1)
    assert mrcdiag.attach(run_dir=run_dir, job="device")
    recorder = wrappers.current_session().recorder
    timer = recorder.device_timer = DeviceTimer(fake_cuda, fake_cuda.raw_stream)
    stream = fake_cuda.Stream(0, delay_ms=DELAY_MS)
    fake_cuda.set_current_stream(stream)
    nccl_sync = wrappers.wrap_collective("all_reduce", lambda *a, **k: None)
    work = QueuedWork()
    nccl_async = wrappers.wrap_collective("all_reduce", lambda *a, **k: work)
    tensor = fake_cuda.FakeCudaTensor(1024)
    host = {}
    if mode == "fail":
        fake_cuda.Event.fail_elapsed = RuntimeError("CUDA error: an illegal memory access")
    host["sync"] = time.monotonic_ns()
    nccl_sync(tensor)
    host["async"] = time.monotonic_ns()
    nccl_async(tensor, async_op=True)
    work.future.set_result([tensor])  # completion callback: the end event is recorded
    stream.hold()  # the GPU is busy: these events do not complete yet
    host["held"] = time.monotonic_ns()
    nccl_sync(tensor)
    recorder.flush()
    host["queued_while_held"] = len(timer.queued)
    stream.release()
    recorder.flush()
    host["queued_after_release"] = len(timer.queued)
    host["cpu"] = time.monotonic_ns()
    dist.all_reduce(torch.ones(4))  # a CPU collective: host times, as always
    stream.hold()
    host["never_done"] = time.monotonic_ns()
    nccl_sync(tensor)  # still on the GPU when the process ends
    recorder_module.INFLIGHT_REPORT_AFTER_NS = 0  # "long ago" is now: a hung GPU
    recorder.flush()
    dist.destroy_process_group()
    print(json.dumps(host))


if __name__ == "__main__":
    main()
