"""The run directory's vocabulary: row positions match the schema, records survive their
JSON form, node samples survive a crash of the agent, and layers import downwards only."""

from __future__ import annotations

import ast
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc

from mrcdiag.store import layout, records, schema
from mrcdiag.store.samples import BLOCKS_FILE, RECENT_FILE, SampleWriter, read_samples
from mrcdiag.store.tail import read_stream

PACKAGE = Path(__file__).resolve().parent.parent / "mrcdiag"


def test_collective_row_positions_are_the_schema_order() -> None:
    positions = {
        name.lower(): value
        for name, value in vars(schema.CollectiveRow).items()
        if name.isupper() and name != "HEAD"
    }
    assert positions == {name: i for i, name in enumerate(schema.COLLECTIVE_SCHEMA.names)}
    assert schema.COLLECTIVE_SCHEMA.names[schema.CollectiveRow.HEAD :] == ["t_end_ns", "step"]


def test_records_read_back_what_they_wrote() -> None:
    clock = records.ClockEstimate(12, 10, 3, "ping_pong")
    rank = records.RankMeta(3, "h1", 1, 4, 99, "boot", "gloo", clock, 0.5, 100, 200)
    assert records.RankMeta.from_json(rank.to_json()) == rank
    assert rank.monotonic_to_unix_ns == 100
    world = records.WorldMeta.of_hosts(["a", "a", "b"], "gloo", "2.13")
    assert records.WorldMeta.from_json(world.to_json()) == world
    assert world.hosts == ["a", "b"] and world.ranks_per_host["b"] == (2,)
    group = records.GroupMeta(1, "tp", (0, 1), "gloo")
    assert records.GroupMeta.from_json(group.to_json()) == group
    event = records.Event(records.EVENT_DROPPED, 5, {"records": 7})
    assert records.Event.from_json(event.to_json()) == event
    run = records.RunMeta("train", ("torchrun", "train.py"), "2026-01-01T00:00:00+00:00")
    assert records.RunMeta.from_json(run.to_json()) == run


def test_job_name_is_the_training_scripts_whoever_asks() -> None:
    assert layout.job_name_of(["torchrun", "--nproc-per-node", "8", "train.py", "--x"]) == "train"
    assert layout.job_name_of(["/opt/x/train.py", "--config", "a.py"]) == "train"
    assert layout.job_name_of(["python", "-m", "torch.distributed.run", "-m", "pkg.fit"]) == "fit"
    assert layout.job_name_of(["my-launcher"]) == "my-launcher"


def _rows(tick: int) -> list[tuple[str, str, float]]:
    return [("mrcdiag_gpu_power_watts", f"gpu={g}", 300.0 + tick + g) for g in range(3)]


def test_node_samples_lose_nothing_when_the_agent_dies(tmp_path: Path) -> None:
    writer = SampleWriter(tmp_path, block_s=10)
    for tick in range(25):  # two blocks written, five ticks only in the recent file
        writer.append(tick * 1_000_000_000, _rows(tick))
    # no close(): as after kill -9
    problems: list[str] = []
    table = read_samples(tmp_path, problems)
    assert problems == []
    assert table.num_rows == 25 * 3
    assert sorted(set(table.column("t_ns").to_pylist())) == [t * 10**9 for t in range(25)]
    with ipc.open_stream(tmp_path / BLOCKS_FILE) as blocks:
        assert sum(b.num_rows for b in blocks) == 22 * 3
    with ipc.open_stream(tmp_path / RECENT_FILE) as recent:
        assert sum(b.num_rows for b in recent) == 3 * 3


def test_rows_in_both_files_after_a_crash_between_them_are_read_once(tmp_path: Path) -> None:
    writer = SampleWriter(tmp_path, block_s=3600)
    for tick in range(4):
        writer.append(tick, _rows(tick))
    recent = (tmp_path / RECENT_FILE).read_bytes()
    writer.write_block()
    # as if the agent died after writing the block, before starting the recent file over
    (tmp_path / RECENT_FILE).write_bytes(recent)
    table = read_samples(tmp_path, [])
    assert table.num_rows == 4 * 3


# Who may import whom: a module imports only from its own layer or the ones below.
LAYERS = {
    "log": 0,
    "background": 0,
    "metrics": 0,
    "store": 1,
    "capture": 2,
    "collectors": 2,
    "analyzers": 3,
    "grafana": 3,
    "report": 4,
    "agent": 4,
    "demo_job": 5,
    "cli": 5,
}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "mrcdiag":
        return None
    return LAYERS.get(parts[1]) if len(parts) > 1 else 0  # `import mrcdiag`: its version


def test_no_module_imports_from_a_layer_above_it() -> None:
    upward = []
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "__init__.py":
            continue  # the public API (attach, step): it reaches the capture layer lazily
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        own = _layer(module.removesuffix(".__init__"))
        if own is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                theirs = _layer(name)
                if theirs is not None and theirs > own:
                    upward.append(f"{module} imports {name}")
    assert upward == []


def test_steps_written_before_the_thread_clocks_read_back_as_not_known(tmp_path: Path) -> None:
    newer = ("cpu_ns", "cpu_wait_ns", "cpu_throttled_ns", *schema.STEP_MEMORY_FIELDS)
    older = pa.schema([f for f in schema.STEP_SCHEMA if f.name not in newer])
    rows = {"step": [0, 1], "t_start_ns": [10, 20], "t_end_ns": [20, 30]}
    rows |= {"data_wait_ns": [0, 0], "comm_ns": [1, 1], "n_collectives": [1, 1]}
    path = tmp_path / layout.STEPS_FILE
    with pa.OSFile(str(path), "wb") as sink, ipc.new_stream(sink, older) as writer:
        writer.write_table(pa.table(rows, schema=older))
    problems: list[str] = []
    table = read_stream(path, schema.STEP_SCHEMA, problems)
    assert table.schema == schema.STEP_SCHEMA and problems == []
    assert table.column("t_end_ns").to_pylist() == [20, 30]
    assert table.column("cpu_ns").to_pylist() == [-1, -1]
    assert table.column("cpu_wait_ns").to_pylist() == [-1, -1]
    assert table.column("cpu_throttled_ns").to_pylist() == [-1, -1]
    assert all(table.column(name).to_pylist() == [-1, -1] for name in schema.STEP_MEMORY_FIELDS)
