"""mrcdiag's cost on a real GPU: per collective on NCCL, and per DDP step.

    python benchmarks/gpu_overhead.py [--calls 20000] [--rounds 5] [--pairs 150]
        [--layers 8] [--width 4096] [--batch 256 2048]

One process, an NCCL group of one (a file store in a temporary folder), mrcdiag attached
in-process as `mrcdiag launch` would.

1. Per collective: all_reduce of a small CUDA tensor, bare and recorded alternated call
   by call; the difference of the medians is the host time the hook adds (two CUDA
   events recorded on the current stream, the record queued for the writer thread).
2. Per DDP step: the same model three times, steps rotating between them one by one:
   `bare` (DDP's own constructor, its C++ all-reduce, nothing recorded), `recorded`
   (built while mrcdiag records: our comm hook, every all-reduce timed on the device)
   and `torch_hook` (bare, with torch's allreduce_hook registered, the usual Python comm
   hook, for comparison). Each step ends with a device synchronize, so its wall time
   includes the GPU's work. Reported: the median step of each and the median of the
   per-round differences against `bare`, in ms and as a share of the bare step.

A group of one does not move bytes between GPUs: what is measured is what mrcdiag adds
to a step, not the network's time. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
from alternating_blocks import alternate_calls, bare_ddp
from torch.nn.parallel import DistributedDataParallel as DDP


def per_call(calls: int, rounds: int) -> dict[str, float]:
    wrapped = dist.all_reduce
    t = torch.ones(1024, device="cuda")
    b, h = alternate_calls(
        wrapped.__mrcdiag_wrapped__, wrapped, t, calls, rounds, torch.cuda.synchronize
    )
    return {"bare_us": round(b, 2), "recorded_us": round(h, 2), "added_us": round(h - b, 2)}


def per_step(pairs: int, layers: int, width: int, batch: int) -> dict[str, object]:
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    torch.manual_seed(0)
    net = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)]).cuda()
    models = {
        "bare": bare_ddp(copy.deepcopy(net), device_ids=[0]),
        "recorded": DDP(copy.deepcopy(net), device_ids=[0]),
        "torch_hook": bare_ddp(copy.deepcopy(net), device_ids=[0]),
    }
    assert hasattr(models["recorded"], "__mrcdiag_dispatch__"), "mrcdiag is not recording"
    models["torch_hook"].register_comm_hook(None, default_hooks.allreduce_hook)
    optimizers = {k: torch.optim.SGD(m.parameters(), lr=1e-6) for k, m in models.items()}
    x = torch.randn(batch, width, device="cuda")
    names = list(models)
    times: dict[str, list[float]] = {k: [] for k in names}
    for round_ in range(pairs + 5):
        order = names[round_ % 3 :] + names[: round_ % 3]  # each model in each place
        for name in order:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            models[name](x).pow(2).mean().backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            if round_ >= 5:
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["bare"])
    out: dict[str, object] = {
        "grad_mb": round(sum(p.numel() for p in net.parameters()) * 4 / 1e6, 1),
        "bare_ms": round(base * 1e3, 3),
    }
    for name in ("recorded", "torch_hook"):
        diff = statistics.median(a - b for a, b in zip(times[name], times["bare"], strict=True))
        out[f"{name}_ms"] = round(statistics.median(times[name]) * 1e3, 3)
        out[f"{name}_added_ms"] = round(diff * 1e3, 3)
        out[f"{name}_added_pct"] = round(100 * diff / base, 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--pairs", type=int, default=150)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--batch", type=int, nargs="+", default=[256, 2048])
    args = p.parse_args()
    import mrcdiag
    from mrcdiag.capture import install, lifecycle

    install.install(torch)
    torch.cuda.set_device(0)
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("nccl", init_method=f"file://{tmp}/store", rank=0, world_size=1)
        assert mrcdiag.attach(run_dir=f"{tmp}/run", job="bench")
        result: dict[str, object] = {
            "device": torch.cuda.get_device_name(0),
            "torch": torch.__version__,
            "nccl_all_reduce": per_call(args.calls, args.rounds),
        }
        result["ddp"] = [
            {"batch": b, **per_step(args.pairs, args.layers, args.width, b)} for b in args.batch
        ]
        lifecycle.detach()
        dist.destroy_process_group()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
