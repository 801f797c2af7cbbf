"""The run directory's metadata records: what each JSON file and JSON line holds.

Every writer (the capture layer at attach, `launch`, the synthetic generator) builds
these records and writes `to_json()`; every reader (the report's reader, the node
agent's rank collector) parses them with `from_json()`. Readers are lenient where a
field may be absent in older or hand-made runs, and strict where a value is needed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class RunMeta:
    """run.json: the job and how it was started."""

    job: str
    command: tuple[str, ...]
    start: str  # ISO 8601, UTC
    start_unix_s: float = 0.0
    host: str = ""
    mrcdiag_version: str = ""
    python: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, **asdict(self), "command": list(self.command)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunMeta:
        return cls(
            job=str(data.get("job") or ""),
            command=tuple(str(c) for c in data.get("command") or ()),
            start=str(data.get("start") or ""),
            start_unix_s=float(data.get("start_unix_s") or 0.0),
            host=str(data.get("host") or ""),
            mrcdiag_version=str(data.get("mrcdiag_version") or ""),
            python=str(data.get("python") or ""),
        )


@dataclass(frozen=True)
class WorldMeta:
    """world.json: the ranks and where they run, written by global rank 0 at attach."""

    world_size: int
    ranks_per_host: dict[str, tuple[int, ...]]
    backend: str = ""
    torch_version: str = ""
    # host -> its node agent's base URL (where launch ran one): the live analysis pulls
    # each node's records from there when the run directory is on the nodes' own disks
    agents: dict[str, str] = field(default_factory=dict)

    @property
    def hosts(self) -> list[str]:
        return sorted(self.ranks_per_host)

    @classmethod
    def of_hosts(
        cls,
        hosts: list[str],
        backend: str,
        torch_version: str,
        agents: dict[str, str] | None = None,
    ) -> WorldMeta:
        """From the host of each rank, in rank order."""
        per_host: dict[str, list[int]] = {}
        for rank, host in enumerate(hosts):
            per_host.setdefault(host, []).append(rank)
        return cls(
            len(hosts),
            {h: tuple(r) for h, r in per_host.items()},
            backend,
            torch_version,
            dict(agents or {}),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "world_size": self.world_size,
            "hosts": self.hosts,
            "ranks_per_host": {h: list(r) for h, r in self.ranks_per_host.items()},
            "backend": self.backend,
            "torch_version": self.torch_version,
            "agents": dict(self.agents),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorldMeta:
        return cls(
            world_size=int(data.get("world_size") or 0),
            ranks_per_host={
                str(h): tuple(int(r) for r in ranks)
                for h, ranks in (data.get("ranks_per_host") or {}).items()
            },
            backend=str(data.get("backend") or ""),
            torch_version=str(data.get("torch_version") or ""),
            agents={str(h): str(u) for h, u in (data.get("agents") or {}).items()},
        )


@dataclass(frozen=True)
class ClockEstimate:
    """How this rank's CLOCK_MONOTONIC relates to rank 0's (capture/clock.py)."""

    offset_ns: int  # add to this rank's monotonic time to get rank 0's
    measured_offset_ns: int | None  # what ping-pong said, even where it was not needed
    uncertainty_ns: int | None  # half the best round trip
    method: str  # "reference", "shared_clock" or "ping_pong"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClockEstimate:
        def optional_int(value: Any) -> int | None:
            return None if value is None else int(value)

        return cls(
            offset_ns=int(data.get("offset_ns") or 0),
            measured_offset_ns=optional_int(data.get("measured_offset_ns")),
            uncertainty_ns=optional_int(data.get("uncertainty_ns")),
            method=str(data.get("method") or "?"),
        )


@dataclass(frozen=True)
class RankMeta:
    """rank.json: one rank's identity, process and clock, written at attach."""

    rank: int
    host: str
    local_rank: int = -1
    world_size: int = 0
    pid: int | None = None
    boot_id: str = ""
    backend: str = ""
    clock: ClockEstimate = field(default_factory=lambda: ClockEstimate(0, None, None, "?"))
    clock_sync_s: float = 0.0
    attached_monotonic_ns: int = 0
    attached_unix_ns: int = 0

    @property
    def monotonic_to_unix_ns(self) -> int:
        """Add to a time of this rank's CLOCK_MONOTONIC to get Unix time."""
        return self.attached_unix_ns - self.attached_monotonic_ns

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, **asdict(self), "clock": self.clock.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RankMeta:
        """Raises KeyError or ValueError when the rank number is missing or not a number."""
        pid = data.get("pid")
        return cls(
            rank=int(data["rank"]),
            host=str(data.get("host", "?")),
            local_rank=int(data.get("local_rank", -1)),
            world_size=int(data.get("world_size") or 0),
            pid=None if pid is None else int(pid),
            boot_id=str(data.get("boot_id") or ""),
            backend=str(data.get("backend") or ""),
            clock=ClockEstimate.from_json(data.get("clock") or {}),
            clock_sync_s=float(data.get("clock_sync_s") or 0.0),
            attached_monotonic_ns=int(data.get("attached_monotonic_ns") or 0),
            attached_unix_ns=int(data.get("attached_unix_ns") or 0),
        )


@dataclass(frozen=True)
class GroupMeta:
    """A line of groups.jsonl: a process group as one rank numbers it (`index` is what
    the rank's collective rows carry in their `group` column)."""

    index: int
    name: str
    ranks: tuple[int, ...]
    backend: str = "?"
    desc: str = ""  # torch's group_desc: "default_pg", "mesh_tp", or the user's own

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "ranks": list(self.ranks),
            "backend": self.backend,
            "desc": self.desc,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GroupMeta:
        return cls(
            index=int(data["index"]),
            name=str(data["name"]),
            ranks=tuple(int(r) for r in data["ranks"]),
            backend=str(data.get("backend", "?")),
            desc=str(data.get("desc", "") or ""),
        )


# What a rank's events.jsonl says happened (the `event` field of each line).
EVENT_ATTACHED = "attached"
EVENT_CLOSED = "closed"  # recording ended cleanly (destroy_process_group or exit)
EVENT_TERMINATED = "terminated"  # flushed on SIGTERM: stopped by the launcher, not lost
EVENT_DROPPED = "dropped"  # records: how many were dropped so far
EVENT_DISABLED = "disabled"  # reason: why recording stopped early
EVENT_IN_COLLECTIVE = "in_collective"  # op, group, seq, nbytes, t_arrive_ns: stuck there
EVENT_DEVICE_TIMING_OFF = "device_timing_off"  # reason
EVENT_EXCEPTION = "exception"  # error (its last line), step, in_collective: died of it
EVENT_DEVICE = (
    "device"  # cuda_device, pci_bus_id, device_name, cpus: the GPU it uses, where it runs
)


@dataclass(frozen=True)
class Event:
    """A line of events.jsonl: what happened to the rank's recording, and when (t_ns on
    the rank's own CLOCK_MONOTONIC), with the fields that event carries."""

    name: str
    t_ns: int
    fields: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"event": self.name, "t_ns": self.t_ns, **self.fields}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Event:
        rest = {k: v for k, v in data.items() if k not in ("event", "t_ns")}
        return cls(str(data.get("event", "")), int(data.get("t_ns") or 0), rest)
