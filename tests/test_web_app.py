"""The dashboard's HTTP side (tinyfed.web.app, tinyfed.web.serve) and `tinyfed dashboard`: pages and JSON
through Starlette's TestClient, the token, the live stream through a real uvicorn on a free port, and the
command's answers to bad input."""

from __future__ import annotations

import json
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

with warnings.catch_warnings():  # starlette >= 1.10 would rather drive its TestClient with httpx2; httpx still works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from tinyfed.cli import cli
from tinyfed.web.app import COOKIE, create_app
from tinyfed.web.serve import BackgroundDashboard, DashboardError, check_bind


def _run_dir(path: Path, boards: int = 120) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    names = [f"b{i:03d}" for i in range(boards)]
    lines = [{"kind": "run_start", "strategy": "ftte", "devices": names}]
    lines += [{"kind": "device_state", "device": n, "state": "idle"} for n in names]
    lines += [{"kind": "evaluation", "version": 0, "metric": "accuracy", "accuracy": 0.25, "loss": 2.0}]
    with open(path / "events.jsonl", "w") as f:
        for seq, ev in enumerate(lines):
            f.write(json.dumps({"seq": seq, "t": seq / 100, "wall": time.time(), **ev}) + "\n")
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run_dir(tmp_path_factory.mktemp("web") / "run")


def test_page_charts_and_json_are_served_from_the_package(run_dir: Path) -> None:
    client = TestClient(create_app([run_dir, run_dir.parent / "not-yet"]))
    page = client.get("/")
    assert page.status_code == 200 and 'src="static/plotly.min.js"' in page.text
    assert "http" not in page.text.split("<script")[1].split(">")[0]  # no CDN: the script is local
    js = client.get("/static/plotly.min.js")
    assert js.status_code == 200 and "plotly" in js.text[:2000].lower() and len(js.content) > 1_000_000
    runs = client.get("/api/runs").json()
    assert [r["name"] for r in runs["runs"]] == ["run", "not-yet"] and "offline" in runs["states"]
    snap = client.get("/api/runs/0/snapshot").json()
    assert snap["boards_total"] == 120 and snap["value"] == 0.25 and snap["states"]["idle"] == 120
    waiting = client.get("/api/runs/1/snapshot").json()
    assert waiting["status"] == "waiting" and "does not exist (yet)" in waiting["problems"][0]
    page2 = client.get("/api/runs/0/boards", params={"offset": 50, "limit": 50}).json()
    assert [r["name"] for r in page2["rows"]][:2] == ["b050", "b051"] and page2["matched"] == 120
    assert len(client.get("/api/runs/0/boards", params={"limit": 10**6}).json()["rows"]) == 120  # capped at 500
    assert client.get("/api/runs/0/boards", params={"state": "asleep"}).status_code == 400
    assert client.get("/api/runs/7/snapshot").status_code == 404
    assert client.get("/api/runs/x/boards").status_code == 404


def test_the_dashboard_cannot_change_anything(run_dir: Path) -> None:
    client = TestClient(create_app([run_dir]))
    before = (run_dir / "events.jsonl").read_bytes()
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for path in ("/", "/api/runs", "/api/runs/0/snapshot", "/api/runs/0/boards"):
            assert client.request(method, path).status_code == 405, (method, path)
    assert (run_dir / "events.jsonl").read_bytes() == before


def test_with_a_token_every_request_needs_it(run_dir: Path) -> None:
    client = TestClient(create_app([run_dir], token="s3cret"))
    assert client.get("/").status_code == 403
    assert client.get("/api/runs/0/snapshot").status_code == 403
    assert client.get("/", params={"token": "wrong"}).status_code == 403
    ok = client.get("/", params={"token": "s3cret"})
    assert ok.status_code == 200 and COOKIE in ok.headers["set-cookie"]
    assert client.get("/api/runs/0/snapshot").status_code == 200  # the cookie the first request set
    assert TestClient(create_app([run_dir], token="s3cret")).get("/static/plotly.min.js").status_code == 403


def test_a_non_local_bind_needs_a_token() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, None)
    with pytest.raises(DashboardError, match="needs a token"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "s3cret")
    with pytest.raises(DashboardError, match="needs a token"):
        BackgroundDashboard([Path("x")], host="192.168.1.2")


def _snapshots(url: str, got: list[dict[str, Any]], ready: threading.Event, more: threading.Condition) -> None:
    with httpx.stream("GET", url, timeout=30) as response:
        ready.set()
        for line in response.iter_lines():
            if line.startswith("data: "):
                with more:
                    got.append(json.loads(line[6:]))
                    more.notify_all()
                if len(got) >= 2:
                    return


def test_the_stream_pushes_a_new_event_within_a_second(tmp_path: Path) -> None:
    run = _run_dir(tmp_path / "live", boards=3)
    server = BackgroundDashboard([run], port=0)
    try:
        assert server.url.startswith("http://127.0.0.1:") and not server.url.endswith(":0/")
        got: list[dict[str, Any]] = []
        ready, more = threading.Event(), threading.Condition()
        reader = threading.Thread(target=_snapshots, args=(server.url + "api/runs/0/stream", got, ready, more),
                                  daemon=True)
        reader.start()
        with more:
            assert more.wait_for(lambda: len(got) >= 1, timeout=30)
        assert got[0]["version"] == 0
        seq = sum(1 for _ in open(run / "events.jsonl"))
        with open(run / "events.jsonl", "a") as f:
            f.write(json.dumps({"seq": seq, "t": 9.0, "wall": time.time(), "kind": "aggregation", "version": 1,
                                "updates": 2}) + "\n")
        written = time.monotonic()
        with more:
            assert more.wait_for(lambda: len(got) >= 2, timeout=30)
        assert time.monotonic() - written < 1.0 and got[1]["version"] == 1
    finally:
        server.stop()
    assert not server.thread.is_alive()


def test_cli_refuses_a_non_local_bind_without_a_token_and_a_missing_dir(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["dashboard", str(tmp_path), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "needs a token" in result.output and "--token" in result.output
    result = runner.invoke(cli, ["dashboard", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no such run directory" in result.output
    (tmp_path / "file").write_text("x")
    result = runner.invoke(cli, ["dashboard", str(tmp_path / "file")])
    assert result.exit_code == 2 and "not a directory" in result.output
    result = runner.invoke(cli, ["dashboard"])
    assert result.exit_code == 2 and "RUN_DIR" in result.output


def test_cli_says_when_the_port_is_taken(tmp_path: Path) -> None:
    server = BackgroundDashboard([tmp_path], port=0)
    try:
        port = server.url.rsplit(":", 1)[1].strip("/")
        result = CliRunner().invoke(cli, ["dashboard", str(tmp_path), "--port", port])
        assert result.exit_code == 2 and "cannot listen" in result.output and "--port" in result.output
    finally:
        server.stop()


def test_simulate_dashboard_needs_out() -> None:
    result = CliRunner().invoke(cli, ["simulate", "--dashboard", "--clients", "4"])
    assert result.exit_code == 2 and "--out" in result.output


def test_cli_serves_until_ctrl_c(tmp_path: Path) -> None:
    """`tinyfed dashboard` in the foreground: prints its address first, serves, stops cleanly on Ctrl-C."""
    import os
    import signal
    import subprocess
    import sys

    run = _run_dir(tmp_path / "run", boards=2)
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "tinyfed.cli", "dashboard", str(run), "--port", "0"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(root)})
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("dashboard http://127.0.0.1:") and "Ctrl-C" in line, line
        url = line.split()[1]
        assert httpx.get(url + "api/runs/0/snapshot", timeout=30).json()["boards_total"] == 2
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(30) in (0, 130) and "Traceback" not in rest, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
