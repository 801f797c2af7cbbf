"""`mrcdiag dashboards push` against a local server that implements the Grafana endpoints
it calls (health, folders, dashboards/db), including a refused token and a Grafana that is
down. This is the only stand-in in the project: no Grafana can run here."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import mrcdiag
from prom import free_port

from mrcdiag.grafana.dashboards import all_dashboards

TOKEN = "glsa_test_token"


class FakeGrafana(BaseHTTPRequestHandler):
    folders: list[dict] = []
    dashboards: dict[str, dict] = {}
    posts: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._reply(401, {"message": "invalid API key"})
            return False
        return True

    def do_GET(self) -> None:
        if not self._authorized():
            return
        if self.path.startswith("/api/frontend/settings"):
            self._reply(200, {"buildInfo": {"version": "11.0.0"}})
        elif self.path.startswith("/api/folders"):
            self._reply(200, self.folders)
        else:
            self._reply(404, {"message": "not found"})

    def do_POST(self) -> None:
        if not self._authorized():
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.posts.append(self.path)
        if self.path == "/api/folders":
            folder = {"uid": f"f{len(self.folders)}", "title": body["title"], "id": 1}
            self.folders.append(folder)
            self._reply(200, folder)
        elif self.path == "/api/dashboards/db":
            dashboard = body["dashboard"]
            assert body["overwrite"] is True and body["folderUid"]
            self.dashboards[dashboard["uid"]] = body
            self._reply(200, {"status": "success", "uid": dashboard["uid"], "version": 1})
        else:
            self._reply(404, {"message": "not found"})


@pytest.fixture
def grafana():
    FakeGrafana.folders, FakeGrafana.dashboards, FakeGrafana.posts = [], {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGrafana)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_push_installs_every_dashboard_in_a_folder_and_is_idempotent(grafana: str) -> None:
    for _ in range(2):
        proc = mrcdiag("dashboards", "push", "--url", grafana, "--token", TOKEN)
        assert proc.returncode == 0, proc.stderr
    assert [f["title"] for f in FakeGrafana.folders] == ["mrcdiag"]  # created once
    assert set(FakeGrafana.dashboards) == {d["uid"] for d in all_dashboards().values()}
    assert FakeGrafana.posts.count("/api/folders") == 1


def test_refused_token_is_one_line(grafana: str) -> None:
    proc = mrcdiag("dashboards", "push", "--url", grafana, "--token", "wrong")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"Error: Grafana at {grafana} refused the credentials (401): pass a service-account "
        "token with Editor rights as --token"
    ]


def test_grafana_down_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc = mrcdiag("dashboards", "push", "--url", url, "--token", TOKEN)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "cannot reach Grafana" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_export_writes_importable_files(tmp_path: Path) -> None:
    proc = mrcdiag("dashboards", "export", str(tmp_path / "out"))
    assert proc.returncode == 0
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == sorted(all_dashboards())
