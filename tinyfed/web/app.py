"""The dashboard's ASGI app: one static page, JSON endpoints and a server-sent event stream.

Every route is a GET: the app has no way to change a run. The stream polls the run directory
(:class:`~tinyfed.web.reader.DirReader`, a few stat calls when nothing changed) every
``poll_s`` and pushes the snapshot as soon as it changed, so the page is live within a second of
an event. With a ``token`` every request must carry it (``?token=``, or the cookie the first such
request sets), else 403: the token is how a dashboard bound beyond this machine keeps others out.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from http.cookies import SimpleCookie
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tinyfed.errors import TinyfedError
from tinyfed.web.reader import BOARD_STATES, DirReader

log = logging.getLogger(__name__)

__all__ = ["COOKIE", "build_app", "create_app", "plotly_js"]

COOKIE = "tinyfed_dashboard"
#: Most board rows one request returns: a 10,000-board fleet is paged, never sent whole.
MAX_PAGE = 500


def plotly_js() -> Path:
    """plotly.min.js as the installed ``plotly`` package ships it (never a CDN: the page works offline)."""
    try:
        import plotly
    except ImportError:
        raise TinyfedError("the dashboard needs the plotly package (its plotly.min.js draws the charts)",
                           fix="pip install plotly (a dependency of tinyfed: reinstall tinyfed)") from None
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise TinyfedError(f"the installed plotly has no {path.name}", fix="reinstall plotly", source=str(path))
    return path


class TokenGate:
    """ASGI middleware: every request needs ``token`` (query or cookie); a query token sets the cookie."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.token = app, token

    def _given(self, scope: Scope) -> tuple[str | None, bool]:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if "token" in query:
            return query["token"][0], True
        for name, value in scope.get("headers", []):
            if name == b"cookie":
                jar: SimpleCookie = SimpleCookie()
                try:
                    jar.load(value.decode("latin-1"))
                except Exception:  # noqa: BLE001 - a malformed cookie header is no token
                    continue
                if COOKIE in jar:
                    return jar[COOKIE].value, False
        return None, False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given, from_query = self._given(scope)
        if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
            response = Response("403: this dashboard needs its token: open the address it printed "
                                "(…/?token=…)\n", status_code=403, media_type="text/plain")
            await response(scope, receive, send)
            return
        if not from_query:
            await self.app(scope, receive, send)
            return

        async def send_with_cookie(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"set-cookie", f"{COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/".encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cookie)


class Runs:
    """The directories shown, each with its reader; refreshes are serialised (the readers are not
    thread-safe, and a server in a thread may be asked from several tasks)."""

    def __init__(self, dirs: Sequence[str | Path]) -> None:
        self.readers = [DirReader(d) for d in dirs]
        self.lock = threading.Lock()

    def get(self, index: str) -> DirReader | None:
        try:
            i = int(index)
        except ValueError:
            return None
        return self.readers[i] if 0 <= i < len(self.readers) else None

    def refreshed(self, reader: DirReader) -> DirReader:
        with self.lock:
            reader.refresh()
        return reader


def _not_found(what: str) -> JSONResponse:
    return JSONResponse({"error": f"no {what} here"}, status_code=404)


def _int(value: str | None, default: int, lo: int, hi: int) -> int:
    try:
        return max(lo, min(hi, int(value))) if value is not None else default
    except ValueError:
        return default


class _Handlers:
    """The routes' handlers over one set of directories."""

    def __init__(self, dirs: Sequence[str | Path], poll_s: float) -> None:
        self.runs = Runs(dirs)
        self.poll_s = poll_s
        self.page = resources.files("tinyfed.web") / "static" / "index.html"
        self.js = plotly_js()
        #: set by :func:`close_streams`: each stream pushes its last snapshot, says so and ends
        self.closing = threading.Event()
        self.streams = 0
        self.streams_changed = threading.Condition()

    async def index(self, request: Request) -> Response:
        return Response(self.page.read_text(encoding="utf-8"), media_type="text/html")

    async def plotly(self, request: Request) -> Response:
        return FileResponse(self.js, media_type="text/javascript", headers={"cache-control": "max-age=86400"})

    async def list_runs(self, request: Request) -> JSONResponse:
        out = []
        for i, r in enumerate(self.runs.readers):
            self.runs.refreshed(r)
            out.append({"id": i, "name": r.path.name, "path": str(r.path), "kind": r.kind})
        return JSONResponse({"runs": out, "states": list(BOARD_STATES)})

    async def snapshot(self, request: Request) -> JSONResponse:
        reader = self.runs.get(request.path_params["run"])
        if reader is None:
            return _not_found("such run")
        with self.runs.lock:
            reader.refresh()
            return JSONResponse(reader.snapshot())

    async def boards(self, request: Request) -> JSONResponse:
        reader = self.runs.get(request.path_params["run"])
        if reader is None:
            return _not_found("such run")
        q = request.query_params
        state = q.get("state") or None
        if state is not None and state not in BOARD_STATES:
            return JSONResponse({"error": f"unknown state {state!r}", "states": list(BOARD_STATES)}, status_code=400)
        with self.runs.lock:
            reader.refresh()
            return JSONResponse(reader.boards(offset=_int(q.get("offset"), 0, 0, 10**9),
                                              limit=_int(q.get("limit"), 50, 1, MAX_PAGE), state=state,
                                              query=q.get("q") or None))

    async def stream(self, request: Request) -> Response:
        reader = self.runs.get(request.path_params["run"])
        if reader is None:
            return _not_found("such run")
        return StreamingResponse(self._events(request, reader), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    async def _events(self, request: Request, reader: DirReader) -> AsyncIterator[str]:
        """The snapshot whenever it changed, and every 5 s regardless (the page's clocks: staleness, late);
        when the server closes, the last snapshot and a ``closing`` event, so the page keeps the end."""
        with self.streams_changed:
            self.streams += 1
        try:
            sent, idle = -1, 0.0
            yield "retry: 1000\n\n"
            while not await request.is_disconnected():
                closing = self.closing.is_set()
                body = None
                with self.runs.lock:
                    reader.refresh()
                    if reader.generation != sent or idle >= 5.0:
                        sent, idle = reader.generation, 0.0
                        body = json.dumps(reader.snapshot())
                if body is not None:
                    yield f"event: snapshot\ndata: {body}\n\n"
                if closing:
                    yield "event: closing\ndata: {}\n\n"
                    return
                await asyncio.sleep(self.poll_s)
                idle += self.poll_s
        finally:
            with self.streams_changed:
                self.streams -= 1
                self.streams_changed.notify_all()

    def close_streams(self, timeout: float) -> None:
        """Let every open stream push what the run wrote last before the server goes (a run's last events
        come just before its dashboard is stopped)."""
        self.closing.set()
        with self.streams_changed:
            self.streams_changed.wait_for(lambda: self.streams == 0, timeout)


def create_app(dirs: Sequence[str | Path], *, token: str | None = None, poll_s: float = 0.25) -> ASGIApp:
    """The dashboard for ``dirs`` (run or ``simulate --out`` directories; they need not exist yet)."""
    return build_app(dirs, token=token, poll_s=poll_s)[0]


def build_app(dirs: Sequence[str | Path], *, token: str | None = None,
              poll_s: float = 0.25) -> tuple[ASGIApp, _Handlers]:
    """:func:`create_app`, and its handlers (whose :meth:`~_Handlers.close_streams` a server calls last)."""
    h = _Handlers(dirs, poll_s)
    app: ASGIApp = Starlette(routes=[
        Route("/", h.index),
        Route("/static/plotly.min.js", h.plotly),
        Route("/api/runs", h.list_runs),
        Route("/api/runs/{run}/snapshot", h.snapshot),
        Route("/api/runs/{run}/boards", h.boards),
        Route("/api/runs/{run}/stream", h.stream),
    ])
    return (TokenGate(app, token) if token else app), h
