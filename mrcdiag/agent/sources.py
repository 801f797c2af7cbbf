"""Where the job-level live analysis gets its records, and which node runs it.

Every node agent serves its own ranks' records at /mrcdiag/records from a cursor (byte
offsets into the ranks' files, kept by the caller: the agent holds no state for it, and
each record crosses the network once). The agent of the node that holds global rank 0
runs the job's analysis (`JobRecords.analysed_here`): it reads the rank directories it
can see (its own; every one when the run directory is shared) and pulls the others'
from their agents, whose URLs the ranks exchanged at attach (world.json "agents").
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from mrcdiag.agent import http
from mrcdiag.agent.native import native_stacks
from mrcdiag.analyzers.settings import DEFAULTS
from mrcdiag.capture.stacks import request_stacks
from mrcdiag.log import warn_once
from mrcdiag.store import layout
from mrcdiag.store.records import WorldMeta
from mrcdiag.store.samples import RecentSamples
from mrcdiag.store.window import DirTail, RankDelta, decode_deltas, encode_deltas, ipc_bytes

PULL_TIMEOUT_S = 5.0


def samples_route(recent: RecentSamples) -> http.Route:
    """/mrcdiag/samples?since_ns=T: this node's samples taken after T (its own clock)."""

    def route(query: dict[str, list[str]]) -> tuple[str, str, bytes, list[tuple[str, str]]]:
        try:
            since = int(query.get("since_ns", ["-1"])[0])
        except ValueError:
            raise ValueError("since_ns must be an integer (ns of the node's clock)") from None
        return "200 OK", "application/octet-stream", ipc_bytes(recent.since(since)), []

    return route


def dump_route(run_dir: Path, node: str) -> http.Route:
    """/mrcdiag/dump: ask this node's ranks for their stacks (stacks.json, within a
    second, in their own directories)."""

    def route(_query: dict[str, list[str]]) -> tuple[str, str, bytes, list[tuple[str, str]]]:
        dirs = local_rank_dirs(run_dir, node)
        request_stacks(dirs)
        native_stacks(dirs)
        return http.json_body({"ranks": [layout.rank_of_dir(d) for d in dirs]})

    return route


def topology_route(run_dir: Path, node: str) -> http.Route:
    """/mrcdiag/topology: this node's topology.json, {} while there is none."""

    def route(_query: dict[str, list[str]]) -> tuple[str, str, bytes, list[tuple[str, str]]]:
        try:
            data = json.loads((layout.node_dir(run_dir, node) / layout.TOPOLOGY_FILE).read_text())
        except (OSError, ValueError):
            data = {}
        return http.json_body(data if isinstance(data, dict) else {})

    return route


def local_rank_dirs(run_dir: Path, node: str) -> list[Path]:
    """The rank directories under run_dir of the ranks that run on `node`."""
    out = []
    for rank_dir in layout.rank_dirs(run_dir):
        try:
            host = json.loads((rank_dir / layout.RANK_META_FILE).read_text()).get("host")
        except (OSError, ValueError, AttributeError):
            continue
        if host == node:
            out.append(rank_dir)
    return out


def dump_all(run_dir: Path, node: str, world: WorldMeta | None) -> threading.Thread | None:
    """Ask every rank of the job for its stacks: this node's directly, the others'
    through their agents; returns the thread taking this node's native stacks, if any."""
    local = local_rank_dirs(run_dir, node)
    request_stacks(local)
    native = native_stacks(local)
    for host, url in (world.agents if world else {}).items():
        if host == node:
            continue
        try:
            urllib.request.urlopen(f"{url.rstrip('/')}{http.DUMP_PATH}", timeout=PULL_TIMEOUT_S)
        except (OSError, urllib.error.URLError) as exc:
            warn_once(f"dump-{url}", f"cannot ask {url} for its ranks' stacks ({exc})")
    return native


class Ending:
    """A node's job has ended (`ended`), and the job's analysis has since read every
    record of this node's ranks (`drained`): the agent waits for that before it exits."""

    def __init__(self) -> None:
        self.ended = threading.Event()
        self.drained = threading.Event()


def node_records_route(run_dir: Path, node: str, ending: Ending | None = None) -> http.Route:
    """/mrcdiag/records?cursor=JSON: this node's ranks' records after the cursor."""

    def route(query: dict[str, list[str]]) -> tuple[str, str, bytes, list[tuple[str, str]]]:
        try:
            cursor = json.loads(query.get("cursor", ["{}"])[0] or "{}")
        except ValueError:
            raise ValueError("cursor must be the JSON the last answer's header gave") from None
        if not isinstance(cursor, dict):
            raise ValueError("cursor must be a JSON object")
        ended = ending is not None and ending.ended.is_set()  # before the read: no race
        tail = DirTail(run_dir, host=node)
        tail.seek(cursor)
        before = tail.cursor()
        body = encode_deltas(tail.read_new())
        after = tail.cursor()
        if ended and after == before:
            ending.drained.set()
        headers = [(http.CURSOR_HEADER, json.dumps(after))]
        return "200 OK", "application/octet-stream", body, [*headers, _ended_header(ended)]

    return route


def _ended_header(ended: bool) -> tuple[str, str]:
    return (http.ENDED_HEADER, "1" if ended else "0")


class AgentPull:
    """Pulls one node agent's records and samples, each once."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.cursor: dict[str, list[int]] = {}
        self.samples_after_ns = -1
        # the node's job had ended and the last answer had nothing new: all is here
        self.complete = False
        self.reachable = True

    def read_samples(self) -> pa.Table | None:
        if self.complete:  # its job has ended and its agent may be gone
            return None
        try:
            with urllib.request.urlopen(
                f"{self.url}{http.SAMPLES_PATH}?since_ns={self.samples_after_ns}",
                timeout=PULL_TIMEOUT_S,
            ) as answer:
                table = ipc.open_stream(answer.read()).read_all()
        except (OSError, ValueError, pa.ArrowInvalid, urllib.error.URLError) as exc:
            warn_once(f"samples-{self.url}", f"cannot read samples from {self.url} ({exc})")
            return None
        if table.num_rows:
            self.samples_after_ns = int(pc.max(table.column("t_ns")).as_py())
        return table

    def read_topology(self) -> dict | None:
        """The node's GPU topology; None while it has none or does not answer."""
        try:
            with urllib.request.urlopen(
                f"{self.url}{http.TOPOLOGY_PATH}", timeout=PULL_TIMEOUT_S
            ) as answer:
                data = json.loads(answer.read() or b"{}")
        except (OSError, ValueError, urllib.error.URLError):
            return None
        return data if isinstance(data, dict) and data.get("gpus") else None

    def read_new(self) -> list[RankDelta]:
        if self.complete:
            return []
        query = urllib.parse.urlencode({"cursor": json.dumps(self.cursor)})
        try:
            with urllib.request.urlopen(
                f"{self.url}{http.RECORDS_PATH}?{query}", timeout=PULL_TIMEOUT_S
            ) as answer:
                body = answer.read()
                cursor = json.loads(answer.headers.get(http.CURSOR_HEADER) or "{}")
                ended = answer.headers.get(http.ENDED_HEADER) == "1"
            deltas = decode_deltas(body)
        except (OSError, ValueError, urllib.error.URLError) as exc:
            warn_once(f"pull-{self.url}", f"cannot read records from {self.url} ({exc}); retrying")
            self.reachable = False
            return []
        self.reachable = True
        self.complete = ended and cursor == self.cursor
        self.cursor = cursor
        return deltas


class JobRecords:
    """The job's records as the live analysis on this node sees them."""

    def __init__(
        self,
        run_dir: Path,
        node: str,
        samples: RecentSamples | None = None,
        keep_samples_s: float = DEFAULTS.live_samples_s,
    ) -> None:
        self.run_dir = run_dir
        self.node = node
        self.local = DirTail(run_dir)
        self.remote: dict[str, AgentPull] = {}
        self._world: WorldMeta | None = None
        self._samples = samples  # this node's, where an agent keeps them
        self._keep_samples_ns = int(keep_samples_s * 1e9)
        self._samples_of: dict[str, list[pa.Table]] = {}  # host -> recent samples
        self._topology: dict[str, dict] = {}  # host -> topology.json

    def node_samples(self) -> dict[str, pa.Table]:
        """Each node's recent samples: this node's from its agent, the others' pulled."""
        if self._samples is not None:
            self._samples_of[self.node] = [self._samples.since(-1)]
        for host, pull in self.remote.items():
            table = pull.read_samples()
            if table is not None and table.num_rows:
                parts = self._samples_of.setdefault(host, [])
                parts.append(table)
                newest = int(pc.max(table.column("t_ns")).as_py())
                kept = pa.concat_tables(parts)
                kept = kept.filter(pc.greater(kept.column("t_ns"), newest - self._keep_samples_ns))
                self._samples_of[host] = [kept]
        return {host: parts[0] for host, parts in self._samples_of.items() if parts}

    def world(self) -> WorldMeta | None:
        if self._world is None:
            try:
                data = json.loads((self.run_dir / layout.WORLD_FILE).read_text())
                self._world = WorldMeta.from_json(data)
            except (OSError, ValueError, TypeError, AttributeError):
                return None
        return self._world

    def link_probe(self) -> list[dict]:
        """The pairwise link probe rank 0 wrote at attach ([] until it has)."""
        try:
            data = json.loads((self.run_dir / layout.PROBE_FILE).read_text())
            return list(data.get("pairs") or [])
        except (OSError, ValueError, TypeError, AttributeError):
            return []

    def topology(self) -> dict[str, dict]:
        """How each node's GPUs are wired: from the node folders this node sees (its own;
        every one on shared storage) and from the other nodes' agents; asked until
        found, then kept."""
        for node_dir in layout.node_dirs([self.run_dir]):
            if node_dir.name in self._topology:
                continue
            try:
                data = json.loads((node_dir / layout.TOPOLOGY_FILE).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                self._topology[node_dir.name] = data
        for host, pull in self.remote.items():  # the other nodes', from their agents
            if host not in self._topology and not pull.complete:
                found = pull.read_topology()
                if found is not None:
                    self._topology[host] = found
        return dict(self._topology)

    def analysed_here(self) -> bool:
        """This node runs the job's analysis when it holds global rank 0."""
        world = self.world()
        if world is None:
            return False
        return any(0 in ranks for host, ranks in world.ranks_per_host.items() if host == self.node)

    def remote_complete(self) -> bool:
        """Every other node's job has ended and its records are all here (or the node no
        longer answers): nothing more will come."""
        return all(p.complete or not p.reachable for p in self.remote.values())

    def read_new(self) -> list[RankDelta]:
        deltas = self.local.read_new()
        world = self.world()
        if world is None:
            return deltas
        seen = {d.meta.rank for d in deltas}
        for host, ranks in world.ranks_per_host.items():
            url = world.agents.get(host)
            if host == self.node or not url or seen.intersection(ranks):
                continue  # its ranks are on a disk this node reads, or it has no agent
            pull = self.remote.setdefault(host, AgentPull(url))
            deltas += pull.read_new()
        return deltas
