"""The node agent: one per node, one /metrics endpoint, samples into the run directory.

Life cycle: start() binds the endpoint (a port in use is an OSError the caller turns into
one line) and starts the sampling thread; stop() ends both. Collectors are registered
once; the agent knows nothing of how they gather.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from mrcdiag.collectors.base import SampleCollector
from mrcdiag.collectors.host import HostCollector
from mrcdiag.collectors.ranks import RankCollector
from mrcdiag.log import warn_once
from mrcdiag.store import layout
from mrcdiag.store.samples import DEFAULT_BLOCK_S, SampleWriter


def default_collectors(common: dict[str, str], ranks: RankCollector | None) -> list[Any]:
    """Every source this node has; a missing library or device yields nothing."""
    collectors: list[Any] = [
        HostCollector(common, ranks.rank_processes if ranks else list),
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

    def start(self) -> str | None:
        """Serve /metrics (if a port was given) and start sampling; returns the URL."""
        url = None
        if self.port is not None:
            server, _thread = start_http_server(self.port, addr=self.addr, registry=self.registry)
            self._server = server
            self.bound_port = server.server_address[1]
            host = self.addr if self.addr not in ("0.0.0.0", "") else self.node
            url = f"http://{host}:{self.bound_port}/metrics"
        if self.run_dir is not None:
            node_dir = layout.node_dir(self.run_dir, self.node)
            node_dir.mkdir(parents=True, exist_ok=True)
            self._samples = SampleWriter(node_dir, self.block_s)
        self._thread = threading.Thread(target=self._loop, name="mrcdiag-agent", daemon=True)
        self._thread.start()
        return url

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
        if self.ranks is not None:
            self.ranks.update()
        return len(rows)

    def _loop(self) -> None:
        while True:
            try:
                self.sample_once()
            except Exception as exc:  # keep serving what we can
                warn_once("agent-loop", f"sampling failed: {exc}")
            if self._stop.wait(self.interval_s):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.sample_once()  # the last seconds of the job
        except Exception:
            pass
        if self._samples is not None:
            self._samples.close()
            self._samples = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
