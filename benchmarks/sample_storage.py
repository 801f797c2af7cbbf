"""Disk taken by a node agent's samples: an 8-GPU node sampled each second, per day.

    python benchmarks/sample_storage.py [--ticks 1800] [--gpus 8]

The real agent (host collector, NVML collector over the fake library of tests/fakes)
samples `--ticks` times on a simulated 1 s clock; the fake GPUs' readings move every
tick as a busy GPU's do (power in milliwatts, utilization in percent, clocks in a few
steps, temperature, PCIe and NVLink counters that grow by random amounts), so that
compression is not flattered by constant values. The figure is the run directory's
bytes per tick times 86,400, beside the same rows stored the old way (one uncompressed
batch of long rows per tick).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import pyarrow as pa  # noqa: E402
from fakes.fake_pynvml import FakeGpu, make_fake_nvml  # noqa: E402

from mrcdiag.agent import node as node_module  # noqa: E402
from mrcdiag.agent.node import NodeAgent  # noqa: E402
from mrcdiag.collectors import nvml  # noqa: E402
from mrcdiag.collectors.host import HostCollector  # noqa: E402
from mrcdiag.store import layout  # noqa: E402
from mrcdiag.store.samples import read_samples  # noqa: E402
from mrcdiag.store.writer import StreamTable  # noqa: E402

DAY_S = 86_400
# How samples were stored before: long rows, label strings, one batch per tick.
OLD_SCHEMA = pa.schema(
    [("t_ns", pa.int64()), ("name", pa.string()), ("labels", pa.string()), ("value", pa.float64())]
)


def _busy(gpu: FakeGpu, rng: random.Random) -> None:
    """One second of a busy GPU's readings."""
    gpu.power_mw = rng.randint(420_000, 700_000)
    gpu.util_gpu = rng.randint(70, 100)
    gpu.util_memory = rng.randint(20, 60)
    gpu.sm_clock_mhz = rng.choice((1755, 1830, 1980))
    gpu.temperature_c = rng.randint(58, 74)
    gpu.mem_used = (30 << 30) + rng.randint(0, 64) * (1 << 20)
    gpu.pcie_tx_kbs = rng.randint(0, 50_000)
    gpu.pcie_rx_kbs = rng.randint(0, 50_000)
    gpu.nvlink_tx_kib += rng.randint(10_000_000, 40_000_000)
    gpu.nvlink_rx_kib += rng.randint(10_000_000, 40_000_000)
    gpu.gpm_dram_bw_util = round(rng.uniform(20, 80), 1)
    gpu.gpm_sm_util = round(rng.uniform(50, 95), 1)
    gpu.gpm_tensor_util = round(rng.uniform(30, 90), 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ticks", type=int, default=1800)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--block-s", type=float, default=None, help="default: the agent's")
    args = p.parse_args()
    rng = random.Random(0)
    gpus = [FakeGpu() for _ in range(args.gpus)]
    clock = {"t": 10**12}
    node_module.time = types.SimpleNamespace(monotonic_ns=lambda: clock["t"])
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        common = {"job": "bench", "node": "node-0000"}
        extra = {} if args.block_s is None else {"block_s": args.block_s}
        agent = NodeAgent(run_dir, None, job="bench", node="node-0000", collectors=[], **extra)
        agent.collectors = [
            HostCollector(common, list),
            nvml.create(common, list, nvml=make_fake_nvml(gpus)),
        ]
        agent._stop.set()  # the sampling thread ends at once: this loop is the clock
        agent.start()
        node_dir = layout.node_dir(run_dir, "node-0000")
        old = StreamTable(Path(tmp) / "old-layout.arrows", OLD_SCHEMA)
        values = 0
        for _ in range(args.ticks):
            for gpu in gpus:
                _busy(gpu, rng)
            clock["t"] += 1_000_000_000
            values += agent.sample_once()
        agent.stop()
        problems: list[str] = []
        table = read_samples(node_dir, problems)
        plain = table.cast(OLD_SCHEMA)
        ticks = sorted(set(plain.column("t_ns").to_pylist()))
        for t in ticks:
            tick = plain.filter(plain.column("t_ns").to_numpy() == t)
            columns = [tick.column(c).to_pylist() for c in OLD_SCHEMA.names]
            old.append_rows(list(zip(*columns, strict=True)))
        old.close()
        new_bytes = sum(f.stat().st_size for f in node_dir.iterdir())
        old_bytes = (Path(tmp) / "old-layout.arrows").stat().st_size
    n_ticks = len(ticks)  # the loop's, and the one the agent takes as it stops
    print(f"{n_ticks} ticks, {values / args.ticks:.0f} values per tick ({args.gpus} GPUs + host)")
    print(f"read back: {table.num_rows} rows; problems: {problems or 'none'}")
    for label, size in (("compacted blocks (now)", new_bytes), ("one batch per tick", old_bytes)):
        print(
            f"{label}: {size / table.num_rows:.2f} bytes per value, "
            f"{size / n_ticks * DAY_S / 1e6:.0f} MB per node per day"
        )


if __name__ == "__main__":
    main()
