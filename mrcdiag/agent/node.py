"""The node agent: one per node, one /metrics endpoint, samples into the run directory.

Life cycle: start() binds the endpoint (a port in use is an OSError the caller turns into
one line) and starts the sampling thread; stop() ends both. Collectors are registered
once; the agent knows nothing of how they gather.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from mrcdiag.agent import http
from mrcdiag.agent.live import LiveAnalysis, LiveFinding, LiveFindingsCollector, live_state
from mrcdiag.agent.sources import (
    Ending,
    JobRecords,
    dump_all,
    dump_route,
    local_rank_dirs,
    node_records_route,
    samples_route,
    topology_route,
)
from mrcdiag.analyzers.settings import DEFAULTS, Settings
from mrcdiag.background import yield_to_the_job
from mrcdiag.collectors.amd import AmdCollector
from mrcdiag.collectors.base import SampleCollector
from mrcdiag.collectors.host import HostCollector
from mrcdiag.collectors.nvml import NvmlCollector
from mrcdiag.collectors.ranks import RankCollector
from mrcdiag.collectors.topology import amd_node_topology, node_topology
from mrcdiag.log import warn_once
from mrcdiag.store import layout
from mrcdiag.store.samples import DEFAULT_BLOCK_S, RecentSamples, SampleWriter
from mrcdiag.store.writer import write_json_atomic


def _answered(rank_dir: Path, since_unix_s: float) -> bool:
    try:
        return (rank_dir / layout.STACKS_FILE).stat().st_mtime >= since_unix_s
    except OSError:
        return False


def default_collectors(common: dict[str, str], ranks: RankCollector | None) -> list[Any]:
    """Every source this node has; a missing library or device yields nothing."""
    collectors: list[Any] = [
        HostCollector(common, ranks.rank_processes if ranks else list, watch_stops=True),
    ]
    rank_processes = ranks.rank_processes if ranks else list
    for factory in _optional_factories():
        try:
            collector = factory(common, rank_processes)
        except Exception as exc:  # e.g. NVML present but broken
            warn_once(f"collector-{factory.__name__}", f"{factory.__name__}: {exc}")
            continue
        if collector is not None:
            collectors.append(collector)
    return collectors


def _optional_factories() -> list[Any]:
    factories = []
    try:
        from mrcdiag.collectors import nvml

        factories.append(nvml.create)
    except ImportError:
        pass
    try:
        from mrcdiag.collectors import amd

        factories.append(amd.create)
    except ImportError:
        pass
    try:
        from mrcdiag.collectors import infiniband

        factories.append(infiniband.create)
    except ImportError:
        pass
    return factories


class NodeAgent:
    def __init__(
        self,
        run_dir: Path | None,
        port: int | None,
        interval_s: float = 1.0,
        job: str = "",
        addr: str = "0.0.0.0",
        collectors: list[Any] | None = None,
        node: str | None = None,
        block_s: float = DEFAULT_BLOCK_S,
        live: bool = True,
        live_interval_s: float = 2.0,
        settings: Settings = DEFAULTS,
        say: Callable[[str], None] | None = None,
        on_hang: Callable[[LiveFinding], None] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.port = port
        self.addr = addr
        self.interval_s = interval_s
        self.block_s = block_s  # seconds of samples compacted into one stored block
        self.node = node or socket.gethostname()
        common = {"job": job, "node": self.node}
        self.ranks = RankCollector(run_dir, job, self.node) if run_dir else None
        self.collectors = (
            collectors if collectors is not None else default_collectors(common, self.ranks)
        )
        self.registry = CollectorRegistry(auto_describe=False)
        for c in self.collectors:
            self.registry.register(c)
        if self.ranks is not None:
            self.registry.register(self.ranks)
        self._server: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._samples: SampleWriter | None = None
        self.bound_port: int | None = None
        self.job = job
        # The job-level live analysis runs here when this node holds global rank 0
        # (world.json appears in its part of the run directory) or every rank's records
        self.live: LiveAnalysis | None = None
        self.live_interval_s = live_interval_s
        self._live_wanted = live and run_dir is not None
        self._live_thread: threading.Thread | None = None
        self._settings = settings
        self._say = say
        self._on_hang = on_hang
        # the samples the live analysis joins to the ranks' records (this node's, or any
        # node's through /mrcdiag/samples)
        self.recent_samples = RecentSamples(settings.live_samples_s)
        self._ending = Ending()  # the job's end, and the analysis having read all of it
        self._records: JobRecords | None = None

    def start(self) -> str | None:
        """Serve /metrics (if a port was given) and start sampling; returns the URL."""
        url = None
        if self.port is not None:
            routes: dict[str, http.Route] = {
                http.LIVE_PATH: self._live_state,
                http.SAMPLES_PATH: samples_route(self.recent_samples),
            }
            if self.run_dir is not None:
                routes[http.RECORDS_PATH] = node_records_route(
                    self.run_dir, self.node, self._ending
                )
                routes[http.DUMP_PATH] = dump_route(self.run_dir, self.node)
                routes[http.TOPOLOGY_PATH] = topology_route(self.run_dir, self.node)
            server, _thread = http.serve(self.addr, self.port, self.registry, routes)
            self._server = server
            self.bound_port = server.server_address[1]
            url = f"{self.base_url}/metrics"
        if self.run_dir is not None:
            node_dir = layout.node_dir(self.run_dir, self.node)
            node_dir.mkdir(parents=True, exist_ok=True)
            self._samples = SampleWriter(node_dir, self.block_s)
            self._write_topology(node_dir)
        self._thread = threading.Thread(target=self._loop, name="mrcdiag-agent", daemon=True)
        self._thread.start()
        if self._live_wanted:
            self._live_thread = threading.Thread(
                target=self._live_loop, name="mrcdiag-live", daemon=True
            )
            self._live_thread.start()
        return url

    def _write_topology(self, node_dir: Path) -> None:
        """How this node's GPUs are wired, once per run (topology.json), from the NVML
        the GPU collector already opened; nothing on a node without one."""
        nvml = next((c.nvml for c in self.collectors if isinstance(c, NvmlCollector)), None)
        smi = next((c.smi for c in self.collectors if isinstance(c, AmdCollector)), None)
        if nvml is None and smi is None:
            return
        topology, why = node_topology(nvml) if nvml is not None else amd_node_topology(smi)
        if topology is None:
            warn_once("topology", f"no GPU topology for this node ({why})")
            return
        try:
            write_json_atomic(node_dir / layout.TOPOLOGY_FILE, topology)
        except OSError as exc:
            warn_once("topology", f"cannot write the GPU topology ({exc.strerror})")

    @property
    def base_url(self) -> str | None:
        """Where other nodes reach this agent (its records, its live state)."""
        if self.bound_port is None:
            return None
        host = self.addr if self.addr not in ("0.0.0.0", "") else self.node
        return f"http://{host}:{self.bound_port}"

    def _live_loop(self) -> None:
        """Wait until this node is the one to analyse the job, then tick until stopped."""
        assert self.run_dir is not None
        yield_to_the_job()
        records = self._records = JobRecords(self.run_dir, self.node, self.recent_samples)
        while not self._stop.wait(self.live_interval_s):
            if self.live is None:
                if not records.analysed_here():
                    continue
                self.live = LiveAnalysis(
                    records.read_new,
                    job=self.job,
                    settings=self._settings,
                    say=self._say,
                    findings_file=self.run_dir / layout.FINDINGS_FILE,
                    world=records.world,
                    link_probe=records.link_probe,
                    node_samples=records.node_samples,
                    topology=records.topology,
                    on_hang=self._on_hang,
                )
                self.registry.register(LiveFindingsCollector(self.live, self.job))
            try:
                self.live.tick()
            except Exception as exc:  # the job goes on; the post-run report still works
                warn_once("live-tick", f"live analysis failed ({exc!r}); retrying")

    def _drain_remote_nodes(self) -> None:
        """Keep reading until every other node's agent says its job ended and nothing
        new is left (their ranks' last records are written when their jobs exit, which
        may be after this one's), or live_drain_s."""
        deadline = time.monotonic() + self._settings.live_drain_s
        records, live = self._records, self.live
        while records is not None and live is not None and records.remote:
            live.tick()
            if records.remote_complete() or time.monotonic() > deadline:
                return
            time.sleep(0.25)

    def _read_elsewhere(self) -> bool:
        """This node's ranks are part of a larger job whose analysis, on another node,
        pulls their records from this agent."""
        if not self._live_wanted or self._server is None or self.run_dir is None:
            return False
        dirs = local_rank_dirs(self.run_dir, self.node)
        world = 0
        for rank_dir in dirs:
            try:
                meta = json.loads((rank_dir / layout.RANK_META_FILE).read_text())
                world = max(world, int(meta.get("world_size") or 0))
            except (OSError, ValueError, TypeError, AttributeError):
                continue
        return 0 < len(dirs) < world

    def dump_stacks(self, wait_s: float = 0.0) -> None:
        """Ask every rank of the job for its stacks (this node's, and through the other
        agents theirs); wait up to wait_s for this node's ranks to answer."""
        if self.run_dir is None:
            return
        asked = time.time()
        world = self.live.window.world if self.live is not None else None
        native = dump_all(self.run_dir, self.node, world)
        deadline = asked + wait_s
        dirs = local_rank_dirs(self.run_dir, self.node)
        while time.time() < deadline and not all(_answered(d, asked) for d in dirs):
            self._stop.wait(0.1)  # the ranks' writer threads answer twice a second
        if native is not None:  # py-spy, reading the ranks from outside
            native.join(max(0.0, deadline - time.time()))

    def _live_state(self, _query: dict[str, list[str]]) -> tuple[str, str, bytes, list]:
        return http.json_body(live_state(self.live))

    def sample_once(self) -> int:
        """Read every collector once and append the samples to the run directory."""
        t_ns = time.monotonic_ns()
        rows = []
        for c in self.collectors:
            if not isinstance(c, SampleCollector):
                continue
            try:
                samples = c.read()
            except Exception as exc:
                warn_once(f"read-{type(c).__name__}", f"{type(c).__name__} failed: {exc}")
                continue
            rows += [(s.name, s.key(), float(s.value)) for s in samples]
        if self._samples is not None and rows:
            self._samples.append(t_ns, rows)
        if rows:
            self.recent_samples.append(t_ns, rows)
        if self.ranks is not None:
            self.ranks.update()
        return len(rows)

    def _loop(self) -> None:
        yield_to_the_job()
        while True:
            try:
                self.sample_once()
            except Exception as exc:  # keep serving what we can
                warn_once("agent-loop", f"sampling failed: {exc}")
            if self._stop.wait(self.interval_s):
                return

    def stop(self) -> None:
        """The job has ended: the last samples, the live analysis's last word, and (on a
        node whose records another node's agent analyses) until that agent has read them
        all, or live_drain_s."""
        self._ending.ended.set()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._live_thread is not None:
            self._live_thread.join(timeout=10)
            if self.live is not None:
                try:
                    self._drain_remote_nodes()
                    self.live.finish()  # what the last seconds said, and the ends
                except Exception as exc:
                    warn_once("live-tick", f"live analysis failed ({exc!r})")
            elif self._read_elsewhere():
                self._ending.drained.wait(self._settings.live_drain_s)
        try:
            self.sample_once()  # the last seconds of the job
        except Exception:
            pass
        for c in self.collectors:
            close = getattr(c, "close", None)
            if callable(close):
                try:
                    close()
                except Exception as exc:
                    warn_once(f"close-{type(c).__name__}", f"{type(c).__name__}: {exc!r}")
        if self._samples is not None:
            self._samples.close()
            self._samples = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
