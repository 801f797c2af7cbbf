"""The node agent's HTTP endpoint: /metrics for Prometheus, and the agent's own routes.

/metrics              Prometheus exposition of the agent's registry
/mrcdiag/records      this node's ranks' records since a cursor (store/window.py), for
                      the job-level live analysis on another node
/mrcdiag/live         the live analysis's state as JSON (for `mrcdiag watch --url`)
/mrcdiag/samples      this node's recent samples; /mrcdiag/dump asks its ranks for stacks
/mrcdiag/topology     how this node's GPUs are wired (topology.json), for the live analysis
"""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from mrcdiag.background import yield_to_the_job

# A route answers (status, content type, body, extra headers) for a query string
Route = Callable[[dict[str, list[str]]], tuple[str, str, bytes, list[tuple[str, str]]]]

RECORDS_PATH = "/mrcdiag/records"
LIVE_PATH = "/mrcdiag/live"
SAMPLES_PATH = "/mrcdiag/samples"
DUMP_PATH = "/mrcdiag/dump"
TOPOLOGY_PATH = "/mrcdiag/topology"  # how this node's GPUs are wired ({} until known)
CURSOR_HEADER = "X-Mrcdiag-Cursor"
# "1" on a records answer once this node's job has ended: after an answer with nothing
# new and this header, the caller has every record the node will ever have
ENDED_HEADER = "X-Mrcdiag-Ended"


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, fmt: str, *args: Any) -> None:
        pass


def serve(
    addr: str, port: int, registry: CollectorRegistry, routes: dict[str, Route]
) -> tuple[WSGIServer, threading.Thread]:
    """Start serving in a daemon thread; OSError when the port is taken."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable) -> list[bytes]:
        route = routes.get(environ.get("PATH_INFO", ""))
        if route is None:
            return metrics_app(environ, start_response)
        try:
            status, content_type, body, headers = route(parse_qs(environ.get("QUERY_STRING", "")))
        except ValueError as exc:
            status, content_type, body, headers = (
                "400 Bad Request",
                "text/plain",
                str(exc).encode(),
                [],
            )
        start_response(status, [("Content-Type", content_type), *headers])
        return [body]

    server = make_server(addr, port, app, _Server, handler_class=_Quiet)

    def serve() -> None:
        yield_to_the_job()
        server.serve_forever()

    thread = threading.Thread(target=serve, name="mrcdiag-http", daemon=True)
    thread.start()
    return server, thread


def json_body(value: Any) -> tuple[str, str, bytes, list[tuple[str, str]]]:
    return "200 OK", "application/json", json.dumps(value).encode(), []
