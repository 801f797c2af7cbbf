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
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from mrcdiag.agent import http
from mrcdiag.log import warn_once
from mrcdiag.store import layout
from mrcdiag.store.records import WorldMeta
from mrcdiag.store.window import DirTail, RankDelta, decode_deltas, encode_deltas

PULL_TIMEOUT_S = 5.0


def node_records_route(run_dir: Path, node: str) -> http.Route:
    """/mrcdiag/records?cursor=JSON: this node's ranks' records after the cursor."""

    def route(query: dict[str, list[str]]) -> tuple[str, str, bytes, list[tuple[str, str]]]:
        try:
            cursor = json.loads(query.get("cursor", ["{}"])[0] or "{}")
        except ValueError:
            raise ValueError("cursor must be the JSON the last answer's header gave") from None
        if not isinstance(cursor, dict):
            raise ValueError("cursor must be a JSON object")
        tail = DirTail(run_dir, host=node)
        tail.seek(cursor)
        body = encode_deltas(tail.read_new())
        return (
            "200 OK",
            "application/octet-stream",
            body,
            [(http.CURSOR_HEADER, json.dumps(tail.cursor()))],
        )

    return route


class AgentPull:
    """Pulls one node agent's records, each once."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.cursor: dict[str, list[int]] = {}

    def read_new(self) -> list[RankDelta]:
        query = urllib.parse.urlencode({"cursor": json.dumps(self.cursor)})
        try:
            with urllib.request.urlopen(
                f"{self.url}{http.RECORDS_PATH}?{query}", timeout=PULL_TIMEOUT_S
            ) as answer:
                body = answer.read()
                cursor = json.loads(answer.headers.get(http.CURSOR_HEADER) or "{}")
            deltas = decode_deltas(body)
        except (OSError, ValueError, urllib.error.URLError) as exc:
            warn_once(f"pull-{self.url}", f"cannot read records from {self.url} ({exc}); retrying")
            return []
        self.cursor = cursor
        return deltas


class JobRecords:
    """The job's records as the live analysis on this node sees them."""

    def __init__(self, run_dir: Path, node: str) -> None:
        self.run_dir = run_dir
        self.node = node
        self.local = DirTail(run_dir)
        self.remote: dict[str, AgentPull] = {}
        self._world: WorldMeta | None = None

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

    def analysed_here(self) -> bool:
        """This node runs the job's analysis when it holds global rank 0."""
        world = self.world()
        if world is None:
            return False
        return any(0 in ranks for host, ranks in world.ranks_per_host.items() if host == self.node)

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
